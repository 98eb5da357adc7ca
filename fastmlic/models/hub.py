"""timm's pretrained weights, where they come from settled in seconds: the local cache (read with no
request at all), else the hub when it answers, else an error that says how to get them. Without this an
offline machine waits about a minute in the hub client's retries, then prints its own message."""

from __future__ import annotations

import contextlib
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Timeout
from pathlib import Path

from ..errors import MissingInput

PROBE_SECONDS = 3.0  # how long the hub may take to accept a connection before we call it unreachable

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm asks the hub for, in its order


def cached_weights(name: str) -> Path | None:
    """The local file timm would load for `name`'s pretrained weights, if it is already cached."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else HF_WEIGHT_FILES:
            hit = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(hit, str):
                return Path(hit)
        return None
    if cfg.url:
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(cfg.url).path).name
        return path if path.is_file() else None
    return None


def _source(name: str) -> tuple[str, int, str]:
    """(host, port, what a user would fetch) of the weights timm downloads for `name`."""
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    url = constants.ENDPOINT if cfg.hf_hub_id else cfg.url
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port, f"huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url


def reachable(host: str, port: int, seconds: float = PROBE_SECONDS) -> bool:
    """Whether `host` accepts a TCP connection within `seconds` (name lookup included: in a thread,
    because a stuck resolver has no timeout of its own)."""

    def connect() -> None:
        socket.create_connection((host, port), timeout=seconds).close()

    pool = ThreadPoolExecutor(1)
    try:
        pool.submit(connect).result(timeout=seconds)
        return True
    except (OSError, Timeout):
        return False
    finally:
        pool.shutdown(wait=False)


def weights_source(name: str) -> str:
    """Where `timm.create_model(name, pretrained=True)` would get its weights: 'cache' (already on this
    machine), 'hub' (not cached; the hub answers within PROBE_SECONDS) or 'timm' (not a timm weights tag:
    timm's own error says so). Otherwise MissingInput naming the weights, where they would be cached,
    `model.pretrained_path` and the command that fetches them."""
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    if get_pretrained_cfg(name) is None:
        return "timm"
    if cached_weights(name) is not None:
        return "cache"
    host, port, where = _source(name)
    if not constants.HF_HUB_OFFLINE and reachable(host, port):
        return "hub"
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{host} does not answer"
    raise MissingInput(
        f"model.pretrained: the weights of {name} ({where}) are not in the local cache "
        f"({constants.HF_HUB_CACHE}) and {why}. Set model.pretrained_path to a local copy of them, or fetch "
        f"them once on a machine with network: python -c \"import timm; timm.create_model('{name}', "
        f"pretrained=True)\" (then copy {constants.HF_HUB_CACHE} here); or train from random weights: "
        f"--model.pretrained=false"
    )


@contextlib.contextmanager
def pretrained_weights(name: str):
    """Around `timm.create_model(name, pretrained=True)`: cached weights are read offline (no request at
    all), others fetched; `weights_source` fails first where they cannot be had."""
    from huggingface_hub import constants

    if weights_source(name) != "cache":
        yield
        return
    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # a tag's weights never change: no request to check for a newer file
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
