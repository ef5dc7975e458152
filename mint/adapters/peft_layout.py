"""The PEFT layout: adapter_config.json + adapter_model.safetensors, as `peft.PeftModel.from_pretrained`
and vLLM's LoRA loader read it. This is the form a revision is stored, addressed and shipped in.

Content address: the sha256 of the canonical adapter_model.safetensors bytes (see
`safetensors_file.encode`: sorted names, gapless data, compact sorted-key header), whose metadata embeds
the config (r, lora_alpha, target_modules, base model) as canonical JSON. So the sha256 covers everything
that changes the adapter's math, the stored file is self-describing, and exporting the same tensors and
config again gives the same file and the same address. A PEFT file written by other tools is read as
well; its address is that of its canonical re-encoding.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mint.adapters.adapter import Adapter, AdapterError, LoraConfig
from mint.adapters.validate import check_against_base, check_structure
from mint.bases.info import PICKLE_SUFFIXES, BaseInfo
from mint.bases.safetensors_file import SafetensorsError, encode, read_tensors
from mint.bases.staging import staged_directory

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_METADATA_KEY = "mint.lora_config"


def encode_peft(adapter: Adapter) -> bytes:
    """The canonical adapter_model.safetensors."""
    return encode(adapter.tensors, {"format": "pt", CONFIG_METADATA_KEY: adapter.config.canonical_json()})


def adapter_sha256(adapter: Adapter) -> str:
    return hashlib.sha256(encode_peft(adapter)).hexdigest()


def write_peft(directory: Path, adapter: Adapter) -> str:
    """Write the adapter into `directory` (absent or empty), all or nothing; returns its sha256."""
    directory = Path(directory)
    check_structure(adapter.config, adapter.tensors, directory / WEIGHTS_FILE)
    weights = encode_peft(adapter)
    with staged_directory(directory) as staging:
        (staging / WEIGHTS_FILE).write_bytes(weights)
        (staging / CONFIG_FILE).write_text(json.dumps(adapter.config.peft_json(), indent=2) + "\n")
    return hashlib.sha256(weights).hexdigest()


def read_peft(directory: Path, base: BaseInfo | None = None, expected_sha256: str | None = None) -> Adapter:
    """Read and check a PEFT adapter directory. The config comes from adapter_config.json, or from the
    weights' metadata when the directory holds only adapter_model.safetensors (as the store ships it);
    when both exist they must agree. With `base`, the adapter must fit it; with `expected_sha256`, its
    content address must equal it."""
    directory = Path(directory)
    refuse_pickle_files(directory)
    weights_path, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    if not weights_path.is_file():
        raise AdapterError(weights_path, "missing")
    try:
        metadata, tensors = read_tensors(weights_path)
    except SafetensorsError as exc:
        raise AdapterError(weights_path, exc.problem) from None
    embedded = _embedded_config(weights_path, metadata.get(CONFIG_METADATA_KEY))
    if config_path.is_file():
        config = LoraConfig.from_json(_load_json(config_path), config_path)
        if embedded is not None and (differences := config.differences(embedded)):
            raise AdapterError(
                config_path, f"disagrees with the config embedded in {WEIGHTS_FILE}: {'; '.join(differences)}"
            )
    elif embedded is not None:
        config = embedded
    else:
        raise AdapterError(config_path, f"missing, and {WEIGHTS_FILE} embeds no config")
    check_structure(config, tensors, weights_path)
    if base is not None:
        check_against_base(config, tensors, base, weights_path)
    adapter = Adapter(config, tensors)
    if expected_sha256 is not None and (actual := adapter_sha256(adapter)) != expected_sha256:
        raise AdapterError(
            weights_path, f"content sha256 {actual} does not match the expected {expected_sha256}"
        )
    return adapter


def refuse_pickle_files(directory: Path) -> None:
    """Adapters are safetensors only: a directory that also holds pickle files is refused outright, so
    no loader downstream can pick the pickle by mistake."""
    if not directory.is_dir():
        raise AdapterError(directory, "not a directory")
    for path in sorted(directory.iterdir()):
        if path.suffix in PICKLE_SUFFIXES:
            raise AdapterError(
                path, "pickle file refused: adapters are read from safetensors only, never unpickled"
            )


def _embedded_config(path: Path, text: str | None) -> LoraConfig | None:
    if text is None:
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterError(path, f"metadata {CONFIG_METADATA_KEY!r} is not valid JSON: {exc}") from None
    return LoraConfig.from_json(raw, path)


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(path, f"unreadable: {exc}") from None
