"""Share ContextPool checkpoints on the Hugging Face Hub: `contextpool-hf push`.

A checkpoint folder (what `save_pretrained` or the Trainer writes) is checked,
given the project's model card, and uploaded so that

    AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True, revision=sha)

works on a machine without this package. What is uploaded is an allow-list
(`hub_files.select_files`): config and generation config, the safetensors
weights (each opened with safetensors' own reader first), the flat code files
`auto_map` names and what they import, tokenizer/processor files, Trainer and
conversion results. Everything else in the folder is skipped and listed; a
selected file that is a symlink out of the folder stops the push.

The upload is two commits on the target branch: the model files, then the
README whose loading snippet pins the first commit's sha (a card cannot name
the commit it is in). A README on the Hub that this project did not generate
is kept unless `overwrite_card=True` (`--overwrite_card`) or a card is given.

Token: `--token`/`token=` or `huggingface_hub`'s own lookup (`HF_TOKEN`, then
the login stored by `hf auth login`). It is passed to `huggingface_hub` only;
never printed, logged or written.

The local folder is only read: the card is uploaded from memory.

Also here: the function `model.push_to_hub()` of the ContextPool classes
delegates to (`push_model`), and `prepare_trainer_for_hub`, which makes
`Trainer(push_to_hub=True)` upload through the same checks and allow-list.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hub_card import (  # noqa: F401 - re-exported: hub's public API
    CARD_TEMPLATE_NAME,
    CITATION,
    build_model_card,
    eval_metrics_from_log_history,
    find_card_template,
    is_contextpool_card,
    read_eval_results,
)
from .hub_files import (  # noqa: F401 - re-exported
    CONFIG_FILES,
    RESULT_FILES,
    TOKENIZER_FILES,
    WEIGHT_FILES,
    CheckpointError,
    check_checkpoint,
    files_to_upload,
    required_code_files,
    select_files,
)

logger = logging.getLogger(__name__)


class HubAuthError(RuntimeError):
    """No Hugging Face token, or the Hub rejected it."""


class HubPushError(RuntimeError):
    """The Hub could not be reached or answered an error; nothing past the failing commit was written."""


@dataclass(frozen=True)
class PushResult:
    """Where a push landed. Pin `commit_sha` (the commit with the model files) in `revision=`."""

    repo_id: str
    revision: str  # branch (or refs/pr/N) the commits went to
    commit_sha: str  # model files; the card's loading snippet pins this
    head_sha: str  # branch head after the card commit
    commit_url: str
    pr_url: str | None = None
    uploaded: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # "name (why)" for every file of the folder left out
    card_kept: bool = False  # a README on the Hub that this project did not write was kept

    @property
    def oid(self) -> str:  # `CommitInfo` compatibility
        return self.commit_sha


def check_eval_results(eval_results: Any, source: str = "eval_results") -> dict[str, float]:
    """A mapping of metric name -> finite number, or ValueError naming what is wrong."""
    if not isinstance(eval_results, Mapping):
        raise ValueError(f"{source} must be a JSON object of metric name -> number, got {type(eval_results).__name__}")
    bad = [
        k for k, v in eval_results.items()
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
    ]
    if bad:
        raise ValueError(f"{source}: values of {bad} are not finite numbers (metrics must be numbers)")
    return dict(eval_results)


def load_eval_results(path: str | Path) -> dict[str, float]:
    """Read an `--eval_results` JSON file; ValueError (one line) when it is missing or not metrics."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--eval_results: no such file {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--eval_results: cannot read {path} ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--eval_results: {path} is not valid JSON ({error})") from None
    return check_eval_results(data, f"--eval_results {path}")


# ---------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------
def _transport_errors() -> tuple[type[BaseException], ...]:
    """HTTP-client errors huggingface_hub lets through (connection refused, DNS, timeouts)."""
    from huggingface_hub import errors

    http_error = getattr(errors, "HTTPError", None)  # the HTTP client's base error, as huggingface_hub imports it
    return (OSError,) + ((http_error,) if isinstance(http_error, type) else ())


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def resolve_token(token: str | None = None) -> str:
    """`token`, else huggingface_hub's lookup (HF_TOKEN, then the stored login). Never logged."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubAuthError(
            "no Hugging Face token: pass --token (or token=...), set HF_TOKEN, or log in with `hf auth login`"
        )
    return token


def _check_token(api, token: str) -> str:
    """The user name behind `token`; `HubAuthError` when the Hub rejects it, `HubPushError` when unreachable."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return api.whoami(token=token)["name"]
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise HubAuthError(f"the Hub at {api.endpoint} rejected the token (401): check HF_TOKEN or --token") from None
        raise HubPushError(f"could not check the token with {api.endpoint}: {_first_line(error)}") from error
    except _transport_errors() as error:
        raise HubPushError(
            f"could not reach the Hub at {api.endpoint} ({_first_line(error)}); check the network or HF_ENDPOINT"
        ) from error


def _remote_card(api, repo_id: str, revision: str) -> str | None:
    """The README.md at `revision`, or None when there is none."""
    from huggingface_hub.errors import EntryNotFoundError

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = api.hf_hub_download(repo_id, "README.md", revision=revision, local_dir=tmp)
        except EntryNotFoundError:
            return None
        return Path(path).read_text(encoding="utf-8", errors="replace")


def plan_push(folder: str | Path, extra_files: Iterable[str] = ()) -> tuple[dict, list[str], list[str]]:
    """Check `folder` and choose its files: -> (config, files to upload, "name (why)" skipped). No network."""
    config = check_checkpoint(folder)
    upload, skipped = select_files(folder, config, extra_files)
    return config, upload, skipped


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | None = None,
    create_pr: bool = False,
    extra_files: Iterable[str] = (),
    card=None,
    overwrite_card: bool = False,
    **card_kwargs: Any,
) -> PushResult:
    """Upload a saved checkpoint folder, its code files and the project's card; the folder is only read.

    Args:
        folder: what `save_pretrained`/the Trainer wrote (config.json, model.safetensors
            or a sharded index, the flat `*.py` code files, tokenizer or processor files).
        repo_id: "namespace/name" or "name" (the token's user namespace).
        private: create the repo private (ignored when it exists).
        revision: branch to commit to, created from main when missing.
        commit_message, commit_description: for the model commit.
        token: a Hub token; default: HF_TOKEN or the stored login.
        create_pr: open a pull request instead of committing to the branch.
        extra_files: further files (relative to `folder`) to upload besides the checkpoint's own.
        card: a ready `ModelCard` (always uploaded); default: `build_model_card(folder, **card_kwargs)`
            with the loading snippet pinned to the model commit.
        overwrite_card: replace a README.md on the Hub that this project did not generate
            (by default it is kept and `PushResult.card_kept` is True).
        **card_kwargs: `base_model`, `datasets`, `eval_results`, `license`, `language`, `tags`, ...

    Everything is checked before anything is sent: the weights with safetensors' reader, the
    code files, the eval results, the card arguments. Files outside the allow-list are skipped
    (logged, and listed in `PushResult.skipped`). Raises CheckpointError / ValueError for a bad
    folder or argument, HubAuthError for the token, HubPushError when the Hub is unreachable
    or answers an error. Returns the `PushResult`; `commit_sha` is the revision to pin.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)  # HFValidationError is a ValueError
    folder = Path(folder)
    config, paths, skipped = plan_push(folder, extra_files)
    if skipped:
        logger.warning("not uploaded from %s: %s", folder, "; ".join(skipped))
    if not any(name in paths for name in TOKENIZER_FILES):
        logger.warning("%s has no tokenizer or processor files; users will need to bring their own", folder)
    if card_kwargs.get("eval_results") is not None:
        card_kwargs["eval_results"] = check_eval_results(card_kwargs["eval_results"])
    if card is None:
        build_model_card(folder, repo_id=repo_id, config=config, **card_kwargs)  # fail on bad card args before any upload
    token = resolve_token(token)
    api = HfApi(token=token)
    user = _check_token(api, token)
    step = "create the repository"
    card_kept = False
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and not create_pr and not revision.startswith("refs/"):
            step = f"create branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "upload the model files"
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in paths]
        model_commit = api.create_commit(
            repo_id, operations, revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload {config.get('architectures', ['model'])[0]} with remote code",
            commit_description=commit_description,
        )
        target = model_commit.pr_revision if create_pr else (revision or "main")
        if target is None:  # create_pr, but every file was already there: the client made no commit
            logger.warning("%s: nothing changed since %s, no pull request opened", repo_id, model_commit.oid)
            return PushResult(repo_id=repo_id, revision=revision or "main", commit_sha=model_commit.oid,
                              head_sha=model_commit.oid, commit_url=model_commit.commit_url,
                              uploaded=tuple(paths), skipped=tuple(skipped))
        head_sha = model_commit.oid
        if card is None and not overwrite_card:
            step = "read the README.md on the Hub"
            existing = _remote_card(api, repo_id, target)
            card_kept = existing is not None and not is_contextpool_card(existing)
        if card_kept:
            logger.warning(
                "%s@%s has a README.md this project did not write: kept it (pass overwrite_card=True / "
                "--overwrite_card to replace it with the ContextPool card). Pin revision=%s to load this upload",
                repo_id, target, model_commit.oid,
            )
        else:
            if card is None:
                card = build_model_card(folder, repo_id=repo_id, revision=model_commit.oid, config=config,
                                        **card_kwargs)
            step = "upload the model card"
            head_sha = api.create_commit(
                repo_id, [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode("utf-8"))],
                revision=target, commit_message="Add ContextPool model card",
            ).oid
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise HubPushError(
            f"push of {folder} to {repo_id} failed while trying to {step} (HTTP {status}): "
            f"{str(error).splitlines()[0]}. The local folder was not changed; rerun the push to retry."
        ) from error
    except _transport_errors() as error:
        raise HubPushError(
            f"push of {folder} to {repo_id} failed while trying to {step}: {_first_line(error)} "
            f"(Hub at {api.endpoint}). The local folder was not changed; rerun the push to retry."
        ) from error
    logger.info("pushed %s to %s@%s as %s", folder, repo_id, target, user)
    return PushResult(
        repo_id=repo_id, revision=target, commit_sha=model_commit.oid, head_sha=head_sha,
        commit_url=model_commit.commit_url, pr_url=model_commit.pr_url, uploaded=tuple(paths),
        skipped=tuple(skipped), card_kept=card_kept,
    )


# ---------------------------------------------------------------------------
# model.push_to_hub() and Trainer(push_to_hub=True)
# ---------------------------------------------------------------------------
def write_code_files(model, folder: str | Path) -> list[str]:
    """Copy the flat modules defining `model` and its config (and their relative imports) into `folder`."""
    from transformers.dynamic_module_utils import get_relative_import_files

    folder = Path(folder)
    written = []
    for obj in (model, getattr(model, "config", None)):
        if obj is None:
            continue
        module = sys.modules.get(type(obj).__module__)
        source = getattr(module, "__file__", None)
        if module is None or source is None or type(obj).__module__.startswith("transformers."):
            continue
        for path in [source, *get_relative_import_files(source)]:
            dest = folder / Path(path).name
            data = Path(path).read_bytes()
            if dest.is_symlink() or not dest.exists() or dest.read_bytes() != data:
                _write_file(dest, data)
            written.append(dest.name)
    return sorted(set(written))


def _write_file(dest: Path, data: bytes) -> None:
    """Write `dest` in the folder itself: a symlink there is replaced, its target left alone."""
    if dest.is_symlink():
        dest.unlink()
    dest.write_bytes(data)


def push_model(
    model,
    repo_id: str,
    *,
    processing_class=None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    **card_kwargs: Any,
) -> PushResult:
    """`model.push_to_hub()` for ContextPool models: save to a temp folder with the code files, push with the card.

    Same arguments as `transformers`' `push_to_hub`, plus `processing_class` (a
    tokenizer or processor saved alongside) and the card arguments of `build_model_card`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        write_code_files(model, tmp)  # save_pretrained copies them only for classes registered for auto
        if processing_class is not None:
            processing_class.save_pretrained(tmp)
        return push_checkpoint(
            tmp, repo_id, private=private, revision=revision, commit_message=commit_message or "Upload model",
            commit_description=commit_description, token=token if isinstance(token, str) else None,
            create_pr=create_pr,
            tags=[*(getattr(model, "model_tags", None) or []), *(tags or []), *card_kwargs.pop("tags", [])],
            **card_kwargs,
        )


def _trainer_model(trainer):
    return trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model


def _trainer_card_kwargs(trainer, card_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    eval_results = card_kwargs.get("eval_results") or eval_metrics_from_log_history(trainer.state.log_history)
    return {**card_kwargs, "eval_results": eval_results}


def _trainer_card(trainer, folder: str | Path, card_kwargs: Mapping[str, Any]):
    return build_model_card(folder, repo_id=trainer.hub_model_id or trainer.args.hub_model_id,
                            config=_trainer_model(trainer).config.to_dict(),
                            **_trainer_card_kwargs(trainer, card_kwargs))


def _push_trainer_folder(trainer, folder, commit_message, card_kwargs, *, token=None, revision=None, private=None):
    """Push a folder the Trainer wrote through `push_checkpoint` (checks, allow-list, card)."""
    write_code_files(_trainer_model(trainer), folder)  # save_pretrained copies them only for registered classes
    return push_checkpoint(
        folder, trainer.hub_model_id, token=token if token is not None else trainer.args.hub_token,
        revision=revision if revision is not None else trainer.args.hub_revision,
        private=private if private is not None else trainer.args.hub_private_repo,
        commit_message=commit_message, **_trainer_card_kwargs(trainer, card_kwargs),
    )


def prepare_trainer_for_hub(trainer, **card_kwargs: Any):
    """Make a `Trainer`'s hub uploads go through `push_checkpoint` and carry the code files and card.

    The Trainer's own uploads (`Trainer.push_to_hub` and, with `hub_strategy` "every_save",
    "checkpoint" or "all_checkpoints", `_push_from_checkpoint`) send everything in `output_dir`
    that does not start with `_`: logs, tokens, `training_args.bin`, without checking the weights.
    This replaces both on `trainer`: the model files of the folder just saved are pushed by
    `push_checkpoint` (safetensors-checked weights, the allow-list, the project's card with the
    Trainer's eval metrics). Pushes run synchronously; one that fails during training is logged
    and training goes on (the end-of-training push raises). With hub_strategy "checkpoint" /
    "all_checkpoints" the checkpoint folder itself (optimizer state included, for resuming) is
    also uploaded, as the Trainer does, after its weights passed the same check.
    A callback writes the code files and the card into `output_dir` at every push, and
    `create_model_card` writes the project's card. Returns the callback. `card_kwargs` go to
    `build_model_card` (base_model, datasets, license, ...).
    """
    from transformers import TrainerCallback
    from transformers.trainer_utils import HubStrategy, SaveStrategy

    class ContextPoolHubCallback(TrainerCallback):
        def on_push_begin(self, args, state, control, **kwargs):
            if not args.should_save:
                return
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            write_code_files(_trainer_model(trainer), args.output_dir)
            card = _trainer_card(trainer, args.output_dir, card_kwargs)
            _write_file(Path(args.output_dir) / "README.md", str(card).encode("utf-8"))

    def create_model_card(self, *args, **kwargs) -> None:
        if self.is_world_process_zero():
            card = _trainer_card(self, self.args.output_dir, card_kwargs)
            _write_file(Path(self.args.output_dir) / "README.md", str(card).encode("utf-8"))

    def push_to_hub(self, commit_message="End of training", blocking=True, token=None, revision=None,
                    private=None, **kwargs):
        """`Trainer.push_to_hub` through `contextpool_hf.hub.push_checkpoint` (always blocking)."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        tags = [*(getattr(self.model, "model_tags", None) or []), *(card_kwargs.get("tags") or [])]
        extra = {**card_kwargs, "tags": tags} if tags else dict(card_kwargs)
        return _push_trainer_folder(self, self.args.output_dir, commit_message, extra, token=token,
                                    revision=revision, private=private)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.args.save_strategy == SaveStrategy.STEPS:
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch)}"
        try:
            _push_trainer_folder(self, checkpoint_folder, message, card_kwargs)
            if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
                from huggingface_hub import HfApi

                path_in_repo = (
                    "last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT
                    else Path(checkpoint_folder).name
                )
                HfApi(token=resolve_token(self.args.hub_token)).upload_folder(
                    repo_id=self.hub_model_id, folder_path=checkpoint_folder, path_in_repo=path_in_repo,
                    commit_message=message + ", checkpoint", revision=self.args.hub_revision,
                    ignore_patterns=["_*", ".*"],
                )
        except (CheckpointError, HubAuthError, HubPushError, ValueError, *_transport_errors()) as error:
            logger.warning("push of %s to the Hub failed, training goes on: %s", checkpoint_folder, error)

    callback = ContextPoolHubCallback()
    trainer.add_callback(callback)
    trainer.create_model_card = types.MethodType(create_model_card, trainer)
    trainer.push_to_hub = types.MethodType(push_to_hub, trainer)
    trainer._push_from_checkpoint = types.MethodType(_push_from_checkpoint, trainer)
    return callback


# ---------------------------------------------------------------------------
# CLI: contextpool-hf push
# ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="checkpoint folder written by save_pretrained or the Trainer")
    parser.add_argument("--repo_id", "--repo-id", required=True, help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if missing)")
    parser.add_argument("--commit_message", "--commit-message", default=None)
    parser.add_argument("--commit_description", "--commit-description", default=None)
    parser.add_argument("--token", default=None,
                        help="Hub token (default: HF_TOKEN or the stored `hf auth login`); never printed")
    parser.add_argument("--create_pr", "--create-pr", action="store_true", help="open a pull request instead")
    parser.add_argument("--base_model", "--base-model", default=None, help="the checkpoint this was converted from")
    parser.add_argument("--dataset", action="append", default=None, dest="datasets",
                        help="dataset id the model was trained on (repeatable)")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--language", action="append", default=None)
    parser.add_argument("--tag", action="append", default=[], dest="tags", help="extra card tag (repeatable)")
    parser.add_argument("--eval_results", "--eval-results", default=None,
                        help="JSON file of eval metrics (default: what the Trainer wrote in the folder)")
    parser.add_argument("--include", action="append", default=[], metavar="FILE",
                        help="also upload FILE (relative to the folder; repeatable): only the checkpoint's own "
                             "files are uploaded otherwise")
    parser.add_argument("--model_card", "--model-card", default=None, metavar="README",
                        help="upload this card instead of the generated one")
    parser.add_argument("--overwrite_card", "--overwrite-card", action="store_true",
                        help="replace a README.md on the Hub that contextpool-hf did not write (default: keep it)")
    parser.add_argument("--dry_run", "--dry-run", action="store_true",
                        help="check the folder and list what would be uploaded and skipped; send nothing")


def _load_card(path: str):
    from huggingface_hub import ModelCard

    try:
        return ModelCard(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--model_card: no such file {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--model_card: cannot read {path} ({error})") from None


def _print_skipped(skipped: Iterable[str]) -> None:
    for entry in skipped:
        print(f"skipped: {entry}")


def run(args: argparse.Namespace) -> int:
    try:
        eval_results = load_eval_results(args.eval_results) if args.eval_results else None
        if args.dry_run:
            from huggingface_hub.utils import validate_repo_id

            validate_repo_id(args.repo_id)
            _, upload, skipped = plan_push(args.folder, args.include)
            for name in upload:
                print(f"would upload: {name}")
            _print_skipped(skipped)
            return 0
        card = _load_card(args.model_card) if args.model_card else None
        result = push_checkpoint(
            args.folder, args.repo_id, private=args.private or None, revision=args.revision,
            commit_message=args.commit_message, commit_description=args.commit_description,
            token=args.token, create_pr=args.create_pr, extra_files=args.include, card=card,
            overwrite_card=args.overwrite_card, base_model=args.base_model, datasets=args.datasets,
            eval_results=eval_results, license=args.license, language=args.language, tags=args.tags,
        )
    except (CheckpointError, HubAuthError, HubPushError, ValueError, OSError) as error:
        message = " ".join(str(error).split())  # one line, whatever the library's message looks like
        print(f"contextpool-hf push: error: {message}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    print(f"pushed {args.folder} to {result.repo_id} ({result.revision}): {len(result.uploaded)} files")
    _print_skipped(result.skipped)
    print(f"model commit: {result.commit_sha}  (load with revision=\"{result.commit_sha}\")")
    if result.card_kept:
        print("kept the README.md already on the Hub (not written by contextpool-hf); --overwrite_card replaces it")
    if result.pr_url:
        print(f"pull request: {result.pr_url}")
    return 0
