"""Faults injected into offline preprocessing: each must end in the right embeddings, an error
naming the file and line, or a counted skip; never in embeddings of other prompts."""

import json
import logging
import re
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT
from fastvideo_grpo.data.embeddings import EmbeddingDataset
from fastvideo_grpo.data.preprocess import PromptFileError, preprocess, read_prompt_file
from fastvideo_grpo.models.hunyuan_video.tiny import write_folder as write_tiny_hunyuan_folder
from fastvideo_grpo.parallel import World

sys.path.insert(0, str(ROOT / "data_preprocess"))
import preprocess_hunyuan_embeddings as cli  # noqa: E402

PROMPTS = ["a red ball bouncing", "a blue ocean wave", "a green frog at night", "a cyan kite",
           "a yellow taxi in the rain", "a purple flower opening"]
ONE_PROCESS = World(rank=0, world_size=1, device=torch.device("cpu"), mesh=None)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_hunyuan_folder(tmp_path_factory.mktemp("tiny_hunyuan"))


def encode_cli(tiny_folder, prompts: list[str], prompt_file, out, *extra):
    prompt_file.write_text("\n".join(prompts) + "\n")
    cli.run(["--model-path", str(tiny_folder), "--prompts", str(prompt_file), "--output", str(out),
             "--shard-size", "4", "--batch-size", "3", "--max-tokens", "12", "--device", "cpu", "--dtype", "fp32",
             *extra])
    return EmbeddingDataset(out)


def mtimes(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("shard_*.safetensors"))}


def assert_same_embeddings(a: EmbeddingDataset, b: EmbeddingDataset) -> None:
    assert a.prompts == b.prompts
    ca, cb = a.conditioning(list(range(len(a)))), b.conditioning(list(range(len(b))))
    assert torch.equal(ca.prompt_embeds, cb.prompt_embeds) and torch.equal(ca.pooled_embeds, cb.pooled_embeds)
    assert torch.equal(ca.attention_mask, cb.attention_mask)


# Fault 1: a re-run into the same --output must not keep shards of other prompts or settings.

def test_rerun_with_another_prompt_file_reencodes_the_shards_that_differ(tiny_folder, tmp_path, caplog):
    out = tmp_path / "emb"
    encode_cli(tiny_folder, PROMPTS, tmp_path / "first.txt", out)
    before = mtimes(out)
    # Same count, same first shard; the second shard's two prompts are new.
    changed = PROMPTS[:4] + ["a white horse galloping", "an orange sunset over hills"]
    with caplog.at_level(logging.INFO):
        data = encode_cli(tiny_folder, changed, tmp_path / "second.txt", out)
    after = mtimes(out)
    assert after["shard_00000.safetensors"] == before["shard_00000.safetensors"]
    assert after["shard_00001.safetensors"] != before["shard_00001.safetensors"]
    assert f"re-encodes {out / 'shard_00001.safetensors'}: its 2 prompts differ from the 2 this run puts there" \
        in caplog.text
    assert "'shards_encoded': 1, 'shards_skipped': 1, 'shards_reencoded': 1" in caplog.text
    assert data.prompts == changed
    assert_same_embeddings(data, encode_cli(tiny_folder, changed, tmp_path / "fresh.txt", tmp_path / "fresh"))


def test_rerun_with_other_settings_reencodes_every_shard(tiny_folder, tmp_path, caplog):
    out = tmp_path / "emb"
    encode_cli(tiny_folder, PROMPTS, tmp_path / "p.txt", out)
    with caplog.at_level(logging.INFO):
        data = encode_cli(tiny_folder, PROMPTS, tmp_path / "p.txt", out, "--max-tokens", "16")
    assert caplog.text.count("settings changed: max_tokens 12 -> 16") == 2
    assert "'shards_encoded': 2, 'shards_skipped': 0, 'shards_reencoded': 2" in caplog.text
    assert data.max_tokens == 16

    template = tmp_path / "template.json"
    template.write_text(json.dumps({"template": "Describe: {}", "crop_start": 2}))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        encode_cli(tiny_folder, PROMPTS, tmp_path / "p.txt", out, "--max-tokens", "16", "--prompt-template",
                   str(template))
    assert caplog.text.count("settings changed: prompt_template") == 2


def test_shard_without_a_fingerprint_is_reencoded(tiny_folder, tmp_path, caplog):
    out = tmp_path / "emb"
    encode_cli(tiny_folder, PROMPTS, tmp_path / "p.txt", out)
    shard = out / "shard_00000.safetensors"
    save_file(load_file(shard), shard)  # as an older version wrote it: no header metadata
    with caplog.at_level(logging.INFO):
        encode_cli(tiny_folder, PROMPTS, tmp_path / "p.txt", out)
    assert f"re-encodes {shard}: it records no fingerprint" in caplog.text
    assert "'shards_encoded': 1, 'shards_skipped': 1, 'shards_reencoded': 1" in caplog.text


class RecordingEncoder:
    """A stand-in model: each item's embedding is the sum of its characters' code points."""

    def __init__(self, read=lambda item: item):
        self.read, self.seen = read, []

    def __call__(self, items: list[str]):
        self.seen += items
        return {"embeds": torch.tensor([[float(sum(map(ord, self.read(i))))] for i in items])}, 0


def test_unit_rerun_encodes_only_changed_items_and_reports_leftover_shards(tmp_path, caplog):
    first = RecordingEncoder()
    preprocess(PROMPTS, first, tmp_path, ONE_PROCESS, shard_size=2, settings={"model_path": "/m"})
    assert first.seen == PROMPTS
    second = RecordingEncoder()
    shorter = PROMPTS[:2] + ["a new third prompt"]
    with caplog.at_level(logging.INFO):
        counts = preprocess(shorter, second, tmp_path, ONE_PROCESS, shard_size=2, settings={"model_path": "/m"})
    assert second.seen == ["a new third prompt"]
    assert counts == {"shards_encoded": 1, "shards_skipped": 1, "shards_reencoded": 1, "prompts_truncated": 0}
    assert load_file(tmp_path / "shard_00001.safetensors")["embeds"].tolist() == [[float(sum(map(ord, shorter[2])))]]
    assert "1 shards from an earlier run are not in manifest.jsonl (shard_00002.safetensors)" in caplog.text
    third = RecordingEncoder()
    preprocess(shorter, third, tmp_path, ONE_PROCESS, shard_size=2, settings={"model_path": "/other"})
    assert third.seen == shorter


def test_latent_shard_of_a_replaced_image_is_reencoded(tmp_path, caplog):
    import preprocess_latents

    images = [tmp_path / "a.png", tmp_path / "b.png"]
    for image, content in zip(images, ("aaa", "bbb")):
        image.write_text(content)
    paths = [str(p) for p in images]
    first = RecordingEncoder(read=lambda p: open(p).read())
    preprocess(paths, first, tmp_path / "lat", ONE_PROCESS, item_key="path", identify=preprocess_latents.file_stamp)
    images[1].write_text("a longer replacement")  # same path, new file
    second = RecordingEncoder(read=lambda p: open(p).read())
    with caplog.at_level(logging.INFO):
        preprocess(paths, second, tmp_path / "lat", ONE_PROCESS, item_key="path",
                   identify=preprocess_latents.file_stamp)
    assert second.seen == paths and "its 2 paths differ" in caplog.text
    stored = load_file(tmp_path / "lat" / "shard_00000.safetensors")["embeds"]
    assert stored[1].item() == float(sum(map(ord, "a longer replacement")))


# Fault 2: prompt files read as written, or an error naming the file and the line.

def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    txt = write(tmp_path / "p.txt", b"\xef\xbb\xbfA red car on a road\nsecond\n")
    assert read_prompt_file(txt) == (["A red car on a road", "second"], 0)
    jsonl = write(tmp_path / "p.jsonl", b'\xef\xbb\xbf{"prompt": "A red car"}\n')
    assert read_prompt_file(jsonl) == (["A red car"], 0)
    # Past the start, a byte order mark is a second file pasted in.
    inner = write(tmp_path / "q.txt", "first\n\ufeffsecond\n".encode())
    with pytest.raises(PromptFileError, match=re.escape(f"{inner}:2: character 1 is U+FEFF (byte order mark")):
        read_prompt_file(inner)


@pytest.mark.parametrize("char, name", [("\u2028", "line separator"), ("\u2029", "paragraph separator"),
                                        ("\x85", "next line (NEL)"), ("\x0c", "form feed"),
                                        ("\x0b", "vertical tab"), ("\r", "carriage return"),
                                        ("\x1e", "record separator")])
def test_characters_splitlines_splits_at_are_errors_naming_the_line(tmp_path, char, name):
    path = write(tmp_path / "p.txt", f"first prompt\nA red{char}car\nthird\n".encode())
    with pytest.raises(PromptFileError, match=re.escape(f"{path}:2: character 6 is U+{ord(char):04X} ({name})")):
        read_prompt_file(path)


@pytest.mark.parametrize("value, shown", [(42, "42"), (None, "null"), (["a", "b"], '["a", "b"]'), (True, "true"),
                                          ({"text": "a"}, '{"text": "a"}')])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_string_json_prompt_is_an_error_naming_line_and_value(tmp_path, value, shown, suffix):
    path = tmp_path / f"p{suffix}"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": value}) + "\n")
    with pytest.raises(PromptFileError, match=re.escape(f"{path}:2: 'prompt' is {shown}, expected a string")):
        read_prompt_file(path)


def test_json_lines_that_are_not_records_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    for line, message in [('["a red car"]', "expected a JSON object with a 'prompt' field, got '[\"a red car\"]'"),
                          ('{"text": "a"}', "expected a JSON object with a 'prompt' field"),
                          ('{"prompt": "a', "not JSON (Unterminated string")]:
        path.write_text('{"prompt": "fine"}\n\n' + line + "\n")
        with pytest.raises(PromptFileError, match=re.escape(f"{path}:3: {message}")):
            read_prompt_file(path)


def test_invalid_utf8_is_an_error_naming_file_and_line(tmp_path):
    path = write(tmp_path / "p.txt", "a good prompt\n".encode() + "un café noir\n".encode("latin-1"))
    with pytest.raises(PromptFileError) as raised:
        read_prompt_file(path)
    assert not isinstance(raised.value, UnicodeDecodeError)
    assert str(raised.value).startswith(f"{path}:2: invalid UTF-8 at byte 7 of the line (b'\\xe9'")


def test_nul_bytes_are_errors_naming_the_line(tmp_path):
    txt = write(tmp_path / "p.txt", b"one\ntwo\nthr\x00ee\n")
    with pytest.raises(PromptFileError, match=re.escape(f"{txt}:3: character 4 is U+0000 (NUL)")):
        read_prompt_file(txt)
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a\\u0000b"}\n')  # NUL as a JSON escape: the line itself is clean
    with pytest.raises(PromptFileError, match=re.escape(f"{jsonl}:1: 'prompt' character 2 is U+0000 (NUL)")):
        read_prompt_file(jsonl)


def test_blank_lines_are_skipped_counted_and_logged(tmp_path, caplog):
    txt = write(tmp_path / "p.txt", b"first\n\n   \t\nsecond\n\n")
    with caplog.at_level(logging.INFO):
        assert read_prompt_file(txt) == (["first", "second"], 3)
    assert f"{txt}: skipped 3 blank lines or empty prompts (line 2, 3, 5)" in caplog.text
    jsonl = write(tmp_path / "p.jsonl", b'{"prompt": "a"}\n{"prompt": "  "}\n\n{"prompt": "b"}\n')
    assert read_prompt_file(jsonl) == (["a", "b"], 2)
    with pytest.raises(PromptFileError, match=f"prompt file {re.escape(str(txt))} holds no prompts"):
        read_prompt_file(write(txt, b"\n \n"))


def test_formats_that_worked_keep_working(tmp_path):
    crlf = write(tmp_path / "p.txt", b"a red car\r\n  a blue\tsky  \r\nno final newline")
    assert read_prompt_file(crlf) == (["a red car", "a blue\tsky", "no final newline"], 0)
    unicode = write(tmp_path / "u.txt", "café crème 🚗\nfamily 👨\u200d👩\u200d👧\n日本の桜\n".encode())
    assert read_prompt_file(unicode)[0] == ["café crème 🚗", "family 👨\u200d👩\u200d👧", "日本の桜"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": " caf\\u00e9 ", "id": 7}\n{"prompt": "two\\nlines", "extra": [1]}\n')
    assert read_prompt_file(jsonl) == (["café", "two\nlines"], 0)


def test_latents_input_list_is_read_like_a_prompt_file(tmp_path, caplog):
    import preprocess_latents

    (tmp_path / "a.png").write_bytes(b"")
    inputs = write(tmp_path / "inputs.txt", b"\xef\xbb\xbfa.png\n\na.png\r\n")
    with caplog.at_level(logging.INFO):
        assert preprocess_latents.read_input_list(inputs) == [tmp_path / "a.png"] * 2
    assert f"{inputs}: skipped 1 blank lines or empty prompts (line 2)" in caplog.text
    write(inputs, b"a.png\na\x00.png\n")
    with pytest.raises(PromptFileError, match=re.escape(f"{inputs}:2: character 2 is U+0000 (NUL)")):
        preprocess_latents.read_input_list(inputs)


def test_cli_refuses_a_bad_prompt_file_before_loading_a_model(tmp_path):
    prompts = write(tmp_path / "p.txt", "one\ntwo\u2028three\n".encode())
    with pytest.raises(PromptFileError, match=re.escape(f"{prompts}:2: character 4 is U+2028 (line separator)")):
        cli.run(["--model-path", str(tmp_path / "no_model"), "--prompts", str(prompts), "--output",
                 str(tmp_path / "out"), "--device", "cpu"])
    assert not (tmp_path / "out").exists()
