from fastvideo_grpo.parallel.distributed import (World, all_finite, all_gather_dp, all_gather_objects, all_reduce_max,
                                                 all_reduce_mean, barrier, gather_objects, init_distributed, shutdown)

__all__ = ["World", "all_finite", "all_gather_dp", "all_gather_objects", "all_reduce_max", "all_reduce_mean", "barrier",
           "gather_objects", "init_distributed", "shutdown"]
