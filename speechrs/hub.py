"""Model resolution: a hub id or a local directory -> a directory holding exactly one usable layout.

Hub ids go through huggingface_hub, so its cache, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and HF_TOKEN
apply. Only the files of one layout are fetched: Voxtral repos carry both layouts, ~9.4 GB each.
"""

import functools
import logging
import socket
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from speechrs.dia.config import dia_schema
from speechrs.errors import ModelNotFoundError, UnsupportedModelError
from speechrs.jsonconf import read_json

log = logging.getLogger(__name__)

# speechrs-quantized*: a directory `speechrs quantize` wrote, put on the hub (quant_store.py)
QUANTIZED_FILES = ["speechrs-quantized*"]
VOXTRAL_NATIVE_FILES = ["params.json", "consolidated.safetensors", "consolidated.safetensors.index.json", "tekken.json"]
VOXTRAL_NATIVE_FILES += QUANTIZED_FILES
VOXTRAL_HF_FILES = [
    "config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tekken.json",
    *QUANTIZED_FILES,
]
DIA_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", *QUANTIZED_FILES]
DAC_FILES = ["config.json", "model.safetensors", "*.pth"]
# the DAC each Dia generation was released with: mistral.rs loads EricB's for v0.1, transformers descript's for 0626
DEFAULT_DAC = {"nari_v01": "EricB/dac_44khz", "hf_0626": "descript/dac_44khz"}


@dataclass(frozen=True)
class ModelSource:
    directory: Path
    family: str  # "voxtral" | "dia"
    layout: str  # voxtral: "native" | "hf"; dia: "nari_v01" | "hf_0626"


def detect(directory: Path) -> ModelSource:
    """Tell family and layout from the config files; params.json wins over config.json (as mistral.rs)."""
    params, config = directory / "params.json", directory / "config.json"
    if params.exists():
        p = read_json(params)
        whisper = (p.get("multimodal") or {}).get("whisper_model_args")
        if whisper is not None:
            if (whisper.get("encoder_args") or {}).get("causal", False):
                raise UnsupportedModelError(
                    f"{params}: causal audio encoder, i.e. Voxtral Realtime; speechrs runs Voxtral-Mini-3B-2507 only"
                )
            return ModelSource(directory, "voxtral", "native")
        if not config.exists():
            raise UnsupportedModelError(
                f"{params} is not a Voxtral config (no multimodal.whisper_model_args); keys={sorted(p)}"
            )
    if config.exists():
        c = read_json(config)
        archs = c.get("architectures") or []
        if "VoxtralForConditionalGeneration" in archs:
            return ModelSource(directory, "voxtral", "hf")
        if any("Realtime" in a for a in archs):
            raise UnsupportedModelError(f"{config}: {archs} is Voxtral Realtime; speechrs runs Voxtral-Mini-3B-2507")
        generation = dia_schema(c)
        if generation is not None:
            return ModelSource(directory, "dia", generation)
        raise UnsupportedModelError(f"{config}: unknown architecture {archs or None}; keys={sorted(c)[:12]}")
    raise ModelNotFoundError(f"{directory} has neither params.json nor config.json")


def resolve(model: str) -> ModelSource:
    """A local directory is used as is; anything else is a hub repo id."""
    directory = _local_dir(model, "model")
    return detect(directory if directory is not None else _download(model))


def resolve_dac(model: str) -> Path:
    """A DAC 44 kHz checkpoint: a local directory as is, or a hub repo id fetched through the HF cache."""
    directory = _local_dir(model, "DAC")
    if directory is not None:
        return directory
    from huggingface_hub import snapshot_download

    with _hub_errors(model, "DAC ", "pass --dac DIR"):
        return Path(snapshot_download(model, allow_patterns=DAC_FILES, local_files_only=not hub_reachable()))


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's endpoint opens within timeout_s. Without one, the cache alone is
    used: huggingface_hub would otherwise retry each file five times with backoff (about 50 s of warnings on a
    machine with no network) before the same "not cached" answer."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if urllib.request.getproxies():  # through a proxy a direct connection says nothing: let the client try
        return True
    url = urllib.parse.urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
        return True
    except OSError:
        log.info("the hub at %s cannot be reached; using the local cache only", constants.ENDPOINT)
        return False


def _local_dir(model: str, what: str) -> Path | None:
    """The directory `model` names, None for a hub id, or an error for anything else."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelNotFoundError(f"{what} '{model}' is neither a directory nor a hub id of the form org/name")
    return None


@contextmanager
def _hub_errors(repo_id: str, what: str = "", fix: str = "pass a local directory"):
    """huggingface_hub's exceptions -> ModelNotFoundError with a message that says what to do."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        yield
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{what}hub repo {repo_id} not found (or gated: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{what}{repo_id} is not in the local Hugging Face cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE is set or no network); download it first or {fix}"
        ) from None
    except HfHubHTTPError as e:
        raise ModelNotFoundError(f"hub error for {what}{repo_id}: {e}") from None


def _download(repo_id: str) -> Path:
    """Read the small config files first, then fetch the weights of that one layout."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    misses: list[Exception] = []

    local_only = not hub_reachable()

    def fetch_config(name: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=local_only))
        except EntryNotFoundError as e:  # includes LocalEntryNotFoundError: offline and not cached
            misses.append(e)
            return None

    with _hub_errors(repo_id):
        params = fetch_config("params.json")
        if params is not None and detect(params.parent).family == "voxtral":
            patterns = VOXTRAL_NATIVE_FILES
        else:
            config = fetch_config("config.json")
            if config is None:
                if any(isinstance(e, LocalEntryNotFoundError) for e in misses):
                    raise misses[-1]
                raise ModelNotFoundError(f"hub repo {repo_id} has neither params.json nor config.json")
            patterns = VOXTRAL_HF_FILES if detect(config.parent).family == "voxtral" else DIA_FILES
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_only))
