"""`infergate models pull REPO_ID`: fetch a model from the Hugging Face hub into the data dir and
add its catalog entry (to `models/pulled.toml`, which the catalog reads beside the built-ins).

Three kinds of repository are understood, told apart by their files:
- a GGUF file (a chat model for the embedded llama.cpp engine);
- a diffusers pipeline folder (`model_index.json`: an image model, served with the `images` extra);
- a piper voice (`X.onnx` beside `X.onnx.json`: a text-to-speech model).

This runs only on that command, never at request time. `huggingface_hub` honours `HF_ENDPOINT`
(a mirror, or the tests' stand-in hub) and `HF_TOKEN` (gated or private repositories).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infergate.catalog import PULLED_CATALOG, ModelSpec

# Diffusers repos carry several copies of each weight (fp16 variants, .bin, ONNX, Flax): take the
# configs, tokenizers and the full-precision safetensors only, which is what CPU inference loads.
DIFFUSERS_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors"]
DIFFUSERS_SKIP = ["*.fp16.safetensors", "*.fp16.*", "*/*.onnx*"]
PREFERRED_QUANTS = ("q4_k_m", "q4_0", "q4_1", "q5_k_m", "q8_0")
IMAGES_HINT = (
    "image models need the images extra: `make serve EXTRAS=images` (or pip install 'infergate[images]')"
)


class PullError(Exception):
    """The repository cannot be pulled as asked; the message says what to pass instead."""


@dataclass(frozen=True)
class PullResult:
    spec: ModelSpec
    files: list[str]
    hint: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.spec.id,
            "kind": self.spec.kind,
            "backend": self.spec.backend,
            "path": self.spec.path,
            "files": self.files,
            **({"hint": self.hint} if self.hint else {}),
        }


def pull(
    repo_id: str,
    data_dir: Path,
    *,
    file: str | None = None,
    model_id: str | None = None,
    revision: str | None = None,
) -> PullResult:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        files = api.list_repo_files(repo_id, revision=revision)
    except Exception as exc:  # the hub's errors name the repo and the HTTP status
        raise PullError(f"cannot list {repo_id}: {exc}") from None
    target = data_dir / "models" / _folder_name(repo_id)
    if file is not None and file not in files:
        raise PullError(f"{repo_id} has no file {file!r}; it has: {', '.join(sorted(files)[:40])}")
    if (file or "").endswith(".onnx") or (file is None and _piper_voices(files) and not _ggufs(files)):
        result = _pull_piper(api, repo_id, files, file, target, revision, model_id)
    elif (file or "").endswith(".gguf") or (file is None and _ggufs(files)):
        result = _pull_gguf(api, repo_id, files, file, target, revision, model_id)
    elif "model_index.json" in files:
        result = _pull_diffusers(api, repo_id, files, target, revision, model_id)
    else:
        raise PullError(
            f"{repo_id} holds no GGUF file, diffusers pipeline (model_index.json) or piper voice "
            "(.onnx with .onnx.json); pass --file to pick a file"
        )
    add_to_catalog(data_dir, result.spec)
    return result


def _pull_gguf(
    api: Any,
    repo_id: str,
    files: list[str],
    file: str | None,
    target: Path,
    revision: str | None,
    model_id: str | None,
) -> PullResult:
    if file is None:
        file = _pick_gguf(repo_id, _ggufs(files))
    path = api.hf_hub_download(repo_id, file, revision=revision, local_dir=target)
    name = model_id or _model_id(Path(file).stem)
    spec = ModelSpec(
        id=name,
        kind="chat",
        backend="llama_cpp",
        path=str(Path(path).resolve()),
        name=f"{repo_id} ({Path(file).name})",
        owned_by=repo_id.split("/")[0],
    )
    return PullResult(spec, [file])


def _pull_diffusers(
    api: Any, repo_id: str, files: list[str], target: Path, revision: str | None, model_id: str | None
) -> PullResult:
    wanted = [
        f
        for f in files
        if any(fnmatch.fnmatch(f, p) for p in DIFFUSERS_PATTERNS)
        and not any(fnmatch.fnmatch(f, p) for p in DIFFUSERS_SKIP)
    ]
    for name in wanted:
        api.hf_hub_download(repo_id, name, revision=revision, local_dir=target)
    spec = ModelSpec(
        id=model_id or _model_id(repo_id.split("/")[-1]),
        kind="image",
        backend="diffusers",
        path=str(target.resolve()),
        name=repo_id,
        owned_by=repo_id.split("/")[0],
    )
    hint = None if importlib.util.find_spec("diffusers") else IMAGES_HINT
    return PullResult(spec, wanted, hint)


def _pull_piper(
    api: Any,
    repo_id: str,
    files: list[str],
    file: str | None,
    target: Path,
    revision: str | None,
    model_id: str | None,
) -> PullResult:
    if file is None:
        voices = _piper_voices(files)
        if len(voices) != 1:
            raise PullError(
                f"{repo_id} has {len(voices)} piper voices; pick one with --file, e.g. "
                f"{', '.join(voices[:5])}"
            )
        file = voices[0]
    if f"{file}.json" not in files:
        raise PullError(f"{file} has no {file}.json beside it: not a piper voice")
    path = api.hf_hub_download(repo_id, file, revision=revision, local_dir=target)
    api.hf_hub_download(repo_id, f"{file}.json", revision=revision, local_dir=target)
    stem = Path(file).name.removesuffix(".onnx")
    spec = ModelSpec(
        id=model_id or _model_id(f"piper-{stem}"),
        kind="tts",
        backend="piper",
        path=str(Path(path).resolve()),
        name=f"Piper {stem}",
        owned_by=repo_id.split("/")[0],
    )
    hint = (
        None
        if importlib.util.find_spec("piper")
        else "speech models need the speech extra (make serve installs it)"
    )
    return PullResult(spec, [file, f"{file}.json"], hint)


def add_to_catalog(data_dir: Path, spec: ModelSpec) -> Path:
    """Write (or replace) the entry in models/pulled.toml, atomically."""
    path = data_dir / PULLED_CATALOG
    path.parent.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    if path.is_file():
        entries = [e for e in tomllib.loads(path.read_text()).get("models", []) if e.get("id") != spec.id]
    fields = ("id", "kind", "backend", "path", "name", "owned_by")
    entries.append({f: getattr(spec, f) for f in fields if getattr(spec, f) is not None})
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(
        "# written by `infergate models pull`; edit prices here or override in INFERGATE_CONFIG\n\n"
        + "\n".join(_toml_entry(e) for e in entries)
    )
    os.replace(tmp, path)
    return path


def _toml_entry(entry: dict[str, Any]) -> str:
    lines = ["[[models]]"]
    for key, value in entry.items():
        lines.append(f"{key} = {_toml_string(str(value))}")
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _ggufs(files: list[str]) -> list[str]:
    return sorted(f for f in files if f.lower().endswith(".gguf"))


def _piper_voices(files: list[str]) -> list[str]:
    names = set(files)
    return sorted(f for f in files if f.endswith(".onnx") and f"{f}.json" in names)


def _pick_gguf(repo_id: str, ggufs: list[str]) -> str:
    if len(ggufs) == 1:
        return ggufs[0]
    for quant in PREFERRED_QUANTS:
        matches = [f for f in ggufs if quant in f.lower()]
        if len(matches) == 1:
            return matches[0]
    raise PullError(f"{repo_id} has {len(ggufs)} GGUF files; pick one with --file: {', '.join(ggufs[:12])}")


def _folder_name(repo_id: str) -> str:
    return repo_id.replace("/", "--")


def _model_id(text: str) -> str:
    """A catalog id from a file or repo name: lower case, safe characters only."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return cleaned or "pulled-model"
