"""Model files from a Hugging Face repo: downloaded (or found in the hub's cache), with one-line
errors for an unreachable hub, a gated or missing repo and a missing file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from engine.errors import ModelSourceError
from engine.model import demo

Progress = Callable[[str], None]
BF16_NAME = demo.MOSHI_BF16_NAME


def name_bits(name: str) -> int | None:
    match = re.search(r"\.q(\d+)\.safetensors$", name)
    return int(match.group(1)) if match else None


def hub_moshi(
    hub: "Hub", quantized: int | None, config_name: str | None
) -> tuple[Path, int | None]:
    """The LM weights file of a repo, like local.py / local_web.py choose it.

    With -q N: `model.qN.safetensors` (or the config's moshi_name if it is that), else the
    bf16 file quantized at load time.
    """
    if quantized is None:
        name = config_name or guess_repo_weights(hub.repo)
        return hub.get(name), None
    want = config_name if config_name and name_bits(config_name) == quantized else None
    want = want or f"model.q{quantized}.safetensors"
    path = hub.get(want, optional=True)
    if path is not None:
        return path, None
    bf16 = config_name if config_name and name_bits(config_name) is None else BF16_NAME
    path = hub.get(bf16, optional=True)
    if path is not None:
        return path, quantized
    if hub.unreachable:  # absent or just not cached: we cannot tell, so say the hub is down
        raise hub.unreachable_error()
    raise ModelSourceError(
        f"{hub.repo} has neither {want} nor {bf16}: try another -q value or --hf-repo"
    )


def guess_repo_weights(repo: str) -> str:
    bits = re.search(r"-q(\d+)$", repo)
    return f"model.q{bits.group(1)}.safetensors" if bits else BF16_NAME


class Hub:
    def __init__(self, repo: str, progress: Progress | None) -> None:
        self.repo = repo
        self.progress = progress
        self.unreachable = False  # an optional file was neither cached nor downloadable

    def unreachable_error(self) -> ModelSourceError:
        return ModelSourceError(
            f"cannot reach the Hugging Face hub for {self.repo} and its files are not cached:"
            " use --demo, or local files with --moshi-weight/--mimi-weight/--tokenizer",
            exit_code=1,
        )

    def get(self, filename: str, *, optional: bool = False) -> Path | None:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors

        cached = None
        try:
            cached = huggingface_hub.try_to_load_from_cache(self.repo, filename)
        except (ValueError, OSError):
            pass
        if not isinstance(cached, str):
            _say(self.progress, f"downloading {filename} from {self.repo}")
        try:
            return Path(huggingface_hub.hf_hub_download(self.repo, filename))
        except hf_errors.LocalEntryNotFoundError:  # subclass of EntryNotFoundError: first
            if optional:
                self.unreachable = True
                return None  # the files that matter will say the hub is unreachable
            raise self.unreachable_error() from None
        except hf_errors.EntryNotFoundError:
            if optional:
                return None
            raise ModelSourceError(f"{self.repo} has no file {filename}") from None
        except hf_errors.GatedRepoError:
            raise ModelSourceError(
                f"{self.repo} is gated: accept its terms on huggingface.co and log in"
                " (huggingface-cli login)",
                exit_code=1,
            ) from None
        except hf_errors.RepositoryNotFoundError:
            raise ModelSourceError(
                f"Hugging Face repo not found (or private): {self.repo}"
            ) from None
        except hf_errors.RevisionNotFoundError:
            raise ModelSourceError(f"revision not found in {self.repo}") from None
        except hf_errors.HFValidationError:
            raise ModelSourceError(f"invalid Hugging Face repo id: {self.repo!r}") from None
        except hf_errors.OfflineModeIsEnabled:
            raise self.unreachable_error() from None
        except hf_errors.HfHubHTTPError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelSourceError(
                f"downloading {filename} from {self.repo} failed: {first}", exit_code=1
            ) from None
        except OSError as exc:
            if is_network_error(exc):
                raise self.unreachable_error() from None
            raise ModelSourceError(
                f"downloading {filename} from {self.repo} failed: {exc}", exit_code=1
            ) from None


def is_network_error(exc: BaseException) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover - huggingface_hub depends on requests
        return False
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
