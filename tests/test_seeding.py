import pytest
import torch

from fastvideo_grpo.config import SamplingConfig
from fastvideo_grpo.sampling.rollout import initial_noise
from fastvideo_grpo.sampling.seeding import Purpose, make_generator

# The first two draws of make_generator(42, 7, purpose, 3), recorded when the purposes were
# still bare integers: renumbering a purpose changes every run's numbers, and this table.
RECORDED = {
    Purpose.SHARED_INITIAL_NOISE: [0.15223482251167297, 0.8311814665794373],
    Purpose.STEP_NOISE: [0.7218467593193054, 0.32184767723083496],
    Purpose.TRAINED_TIMESTEPS: [1.3321536779403687, -1.9603837728500366],
    Purpose.INITIAL_NOISE: [0.32350975275039673, 1.1760377883911133],
    Purpose.STEP_PLAN: [-0.7323917150497437, 0.5206064581871033],
    Purpose.NFT_TIMESTEPS_AND_NOISE: [0.012310396879911423, -0.9352846145629883],
}


@pytest.mark.parametrize("purpose", list(Purpose))
def test_each_purpose_draws_what_its_number_drew(purpose):
    draws = torch.randn(2, generator=make_generator(42, 7, purpose, 3))
    assert torch.equal(draws, torch.tensor(RECORDED[purpose]))


@pytest.mark.parametrize("shared", [True, False])
def test_initial_noise_is_drawn_per_group_or_per_sample_by_global_index(shared):
    s = SamplingConfig(group_size=2, shared_noise=shared)
    noise = initial_noise(s, 4, (3,), (42, 7), first_sample=6)
    if shared:  # groups 3 and 4 of the global batch, each draw repeated for its 2 samples
        expected = [torch.randn(3, generator=make_generator(42, 7, 0, group)) for group in (3, 3, 4, 4)]
    else:  # samples 6..9 of the global batch
        expected = [torch.randn(3, generator=make_generator(42, 7, 3, sample)) for sample in range(6, 10)]
    assert torch.equal(noise, torch.stack(expected))
