"""A registered adapter merged into its base model: one full model in safetensors with the base's
tokenizer (chat template included), loadable by transformers and vLLM like any base model.

PEFT's ``merge_and_unload`` adds each LoRA product ``B·A·scale`` into the weight it sits on. A
QLoRA adapter was trained against the 4-bit (NF4) base, so it is merged onto that base dequantized
(bitsandbytes' NF4 values in the base's precision), which is what its training forward computed;
merging onto the original full-precision weights would differ by the quantization error.

``merge_to_dir`` writes a local folder (the CLI); ``merge_into_store`` puts the result in the
artifact store (``merged/<name>/<version>``, made once per version) and, when asked, also as a
base model under ``$STUDIO_HOME/models/<base_name>`` that recipes and deployments name by folder.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from studio.errors import Conflict, StudioError
from studio.registry.export import CARD, model_card, version_files
from studio.registry.versions import get_version
from studio.settings import StudioSettings
from studio.store.artifacts import ArtifactStore

BASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class MergeSource:
    """What a merge needs from the registry, read before the (slow) merge starts."""

    ref: str
    name: str
    version: int
    base_model: str
    adapter_type: str
    uri: str
    card: str


def merge_source(session: Session, ref: str) -> MergeSource:
    """The version to merge: an adapter whose files are there (404 naming why otherwise)."""
    mv = get_version(session, ref)
    ref = f"{mv.name}@{mv.version}"
    if mv.adapter_type not in ("lora", "qlora"):
        raise StudioError(f"{ref} holds {mv.adapter_type} weights, not an adapter: there is nothing to merge",
                          f"download it as it is (`studio models download {ref}`)")
    version_files(mv)
    return MergeSource(ref, mv.name, mv.version, mv.base_model, mv.adapter_type, mv.uri,
                       model_card(session, mv) + f"\nThis folder is `{ref}` merged into `{mv.base_model}` "
                       f"({'onto the dequantized 4-bit base' if mv.adapter_type == 'qlora' else 'merge_and_unload'}).\n")


def _load_base(base: str, adapter_type: str):
    import torch
    from transformers import AutoModelForCausalLM

    if adapter_type != "qlora":
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    import importlib.util

    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise StudioError("merging a QLoRA adapter needs bitsandbytes to dequantize its 4-bit base",
                          "install bitsandbytes (part of the training dependencies), or train a lora adapter")
    # The same quantization the QLoRA runner trained against (studio.train.common.quantization_config).
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(base, quantization_config=quant).dequantize()


def merge_to_dir(src: MergeSource, out: str | Path, cache_dir: str | Path) -> Path:
    """Merge ``src`` into its base and write the full model, tokenizer and card to ``out`` (a new
    or empty folder). Written under a temporary sibling and renamed, so ``out`` is whole or absent."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoTokenizer

    from studio.models.adapters import check_adapter_fits, fetch_adapter, inspect_adapter
    from studio.models.source import resolve_model_source

    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"{out} already exists and is not an empty folder; a merge never overwrites",
                       "choose a new --out folder")
    base = resolve_model_source(src.base_model)
    adapter = fetch_adapter(src.uri, cache_dir)
    check_adapter_fits(inspect_adapter(adapter), base)
    dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = PeftModel.from_pretrained(_load_base(base, src.adapter_type), str(adapter)).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        model.to(dtype).save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(str(tmp))
        (tmp / CARD).write_text(src.card, encoding="utf-8")
        os.replace(tmp, out)  # onto an empty folder too
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def merge_into_store(settings: StudioSettings, src: MergeSource, base_name: str | None = None) -> dict[str, Any]:
    """Merge into the artifact store (once per version: a second call reuses it) and, with
    ``base_name``, also into ``$STUDIO_HOME/models/<base_name>`` (409 if that folder exists)."""
    target = None
    if base_name is not None:
        if not BASE_NAME.fullmatch(base_name) or base_name in (".", ".."):
            raise StudioError(f"base_name {base_name!r} is not a folder name",
                              "use letters, digits, '.', '_' and '-' (at most 128), starting with a letter or digit")
        target = settings.models_dir / base_name
        if target.exists():
            raise Conflict(f"a base model named {base_name!r} already exists ({target})", "choose another base_name")
    store = ArtifactStore(settings.artifacts)
    key = f"merged/{src.name}/{src.version}"
    work = Path(tempfile.mkdtemp(prefix="studio-merge-"))
    try:
        local = work / "model"
        if store.exists(f"{key}/config.json"):
            if target is not None:
                store.fs.get(store.path(key) + "/", str(local) + "/", recursive=True)
        else:
            merge_to_dir(src, local, work / "adapter")
            store.put_dir(local, key)
        if target is not None:
            settings.models_dir.mkdir(parents=True, exist_ok=True)
            staged = settings.models_dir / f".{base_name}.tmp-{uuid.uuid4().hex[:12]}"
            shutil.copytree(local, staged)
            try:
                os.rename(staged, target)  # never onto a folder another merge made meanwhile
            except OSError as e:
                shutil.rmtree(staged, ignore_errors=True)
                raise Conflict(f"a base model named {base_name!r} already exists ({target})",
                               "choose another base_name") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"ref": src.ref, "uri": store.uri(key), "base_model": base_name,
            "path": str(target) if target is not None else None}
