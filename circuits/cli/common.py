"""What the subcommands share: checks of the command line made before anything is loaded, list
and number parsing, the common options, loading the model and the prompt pairs, and reading a
saved circuit. Bad input is a `UsageError`: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm as tqdm_std
from tqdm.auto import tqdm

from circuits.circuit import Circuit
from circuits.methods import METHODS, IGOptions
from saes.gemma import GemmaPackagesMissing
from saes.loader import MODELS, load, transformers_progress_bars
from saes.names import resolve_model
from saes.splice import SplicedModel
from tasks import sva
from tasks.pairs import PromptPair


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


# ---- checks made before anything is loaded ---------------------------------------------------
def check_task(task: str) -> None:
    """A construction name or a path to a JSONL file of prompt pairs."""
    if task in sva.CONSTRUCTIONS:
        return
    if not task.endswith((".json", ".jsonl")) and "/" not in task:
        raise UsageError(
            f"unknown task {task!r}; use one of {', '.join(sva.CONSTRUCTIONS)} or a JSONL path"
        )
    if not Path(task).is_file():
        raise UsageError(f"task file {task} does not exist; pass an existing JSONL file")


MODEL_HELP = (f"a named model ({', '.join(MODELS)}), any model transformer_lens knows by name "
              "or alias (gpt2, EleutherAI/pythia-160m, Qwen/Qwen2.5-0.5B, ...), or a local "
              "Hugging Face checkpoint folder; `circuits models` lists them")


def check_model(name: str | None) -> str | None:
    """A model name saes.load takes (checked before anything loads); the name it is loaded as."""
    if name is None:
        return None
    try:
        return resolve_model(name).name
    except ValueError as err:
        raise UsageError(str(err)) from None


DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(device: str | None) -> None:
    """A device that exists here (cpu, cuda[:N], mps), checked before the model loads: a typo
    or a missing GPU is one line, not a traceback minutes into the run."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise UsageError(f"unknown --device {device!r}; use cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here; use --device cpu")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: there are {torch.cuda.device_count()} CUDA "
                         f"device(s); use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here; use --device cpu")


def task_files(task: str) -> list[Path]:
    """The input files a task names (a JSONL path; none for a construction), which a run
    directory must not hold (`run_dir`'s inputs)."""
    return [] if task in sva.CONSTRUCTIONS else [Path(task)]


def check_methods(methods: list[str], allowed: tuple[str, ...] | list[str]) -> None:
    unknown = [m for m in methods if m not in allowed]
    if unknown or not methods:
        raise UsageError(
            f"unknown method(s) {unknown or methods}; choose from {', '.join(allowed)}"
        )


def check_threshold(name: str, value: float | None, *, upper: float | None = None) -> None:
    if value is None:
        return
    if math.isnan(value) or value < 0 or (upper is not None and value > upper):
        span = f"[0, {upper}]" if upper is not None else ">= 0"
        raise UsageError(f"{name} must be a number in {span}, got {value}")


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_numbers(name: str, text: str, kind: type) -> list:
    """'0.1,0.01' or, for floats, 'logspace:START:STOP:N' (powers of ten, as numpy)."""
    try:
        if kind is float and text.startswith("logspace:"):
            _, start, stop, n = text.split(":")
            a, b, k = float(start), float(stop), int(n)
            if k < 1:
                raise ValueError
            return [10 ** (a + (b - a) * i / max(k - 1, 1)) for i in range(k)]
        values = [kind(item) for item in split_list(text)]
    except ValueError:
        raise UsageError(
            f"{name} {text!r} is not a comma-separated list of {kind.__name__}s"
            + (" or logspace:START:STOP:N" if kind is float else "")
        ) from None
    if not values:
        raise UsageError(f"{name} is empty; give at least one value")
    for value in values:
        check_threshold(name, value)
    return values


# ---- method options --------------------------------------------------------------------------
OPTION_FLAGS = {"steps": "--steps", "rules": "--rules"}  # method option -> its flag


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options given on the command line (flags left out are absent)."""
    rules = None if args.rules is None else [] if args.rules == "none" else split_list(args.rules)
    given = {"steps": args.steps, "rules": rules}
    return {name: value for name, value in given.items() if value is not None}


def method_kwargs(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """attribute() keywords for ``method``: batch size, progress, and of the method options given
    on the command line those that are the method's own (``METHODS[method].option_names``)."""
    own = METHODS[method].option_names
    return {"batch_size": args.batch_size, "progress": not args.quiet,
            **{k: v for k, v in given_options(args).items() if k in own}}


# ---- the options most subcommands take -------------------------------------------------------
def add_common(p: argparse.ArgumentParser, *, n: int | None = 100, eval_n: int | None = 40) -> None:
    p.add_argument("--model", default="organism",
                   help=MODEL_HELP + " (default: organism, offline, shipped in this repo)")
    p.add_argument("--task", default="across_pp",
                   help=f"agreement construction ({', '.join(sva.CONSTRUCTIONS)}) or a JSONL "
                        "file of prompt pairs (default: across_pp)")
    if n is not None:
        p.add_argument("--n", type=positive, default=n,
                       help=f"prompt pairs for attribution (default {n})")
    if eval_n is not None:
        p.add_argument("--eval-n", type=positive, default=eval_n,
                       help=f"held-out pairs for evaluation (default {eval_n})")
    p.add_argument("--batch-size", type=positive, default=32, help="pairs per batch (32)")
    p.add_argument("--steps", type=positive, default=None,
                   help=f"ig interpolation steps (default {IGOptions.steps})")
    ruled = ", ".join(m for m, record in METHODS.items() if record.takes_rules)
    p.add_argument("--rules", default=None,
                   help=f"LRP rules of {ruled}, comma-separated (ln,identity,half,ah) or 'none' "
                        "(default: the model family's set)")
    p.add_argument("--dictionaries", default=None, metavar="RELEASE[:VARIANT][+...]",
                   help="sae_lens release string(s) of the dictionaries to splice, made for "
                        "--model (`circuits models MODEL` lists them), e.g. gpt2-small-res-jb "
                        "or gemma-scope-2-270m-pt-res:width_16k_l0_medium+gemma-scope-2-270m-pt-"
                        "mlp:width_16k_l0_medium; 'neurons' for the neuron baseline (default: "
                        "the model's own, if it has any)")
    p.add_argument("--sites", type=site_list, default=None,
                   help="splice dictionaries at these sites only, comma-separated (e.g. "
                        "embed,resid_1,mlp_2); edges then span the unspliced blocks (default: "
                        "every site the model has a dictionary for)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", type=Path, default=None,
                   help="run directory (default runs/<what>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def site_list(text: str) -> list[str]:
    """An argparse type: a comma-separated list of site names (checked against the model when
    it loads)."""
    names = split_list(text)
    if not names:
        raise argparse.ArgumentTypeError("give at least one site name, e.g. resid_1,mlp_2")
    return names


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _at_least(text, 1)


def non_negative(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _at_least(text, 0)


def _at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


# ---- loading ---------------------------------------------------------------------------------
def load_model(name: str, device: str | None, dictionaries=None, *, sites: list[str] | None = None,
               quiet: bool = False) -> SplicedModel:
    """`saes.load`; what it raises for missing or broken files (WeightsUnavailable, a
    FileNotFoundError; ValueError for a dictionary whose config and weights disagree) is one
    line from `main`, the missing Gemma packages too."""
    if not quiet:
        print(f"loading {name} ...", flush=True)
    try:
        model = load(name, device=device, dictionaries=dictionaries, sites=sites)
    except GemmaPackagesMissing as err:
        raise UsageError(str(err)) from err
    if not quiet:
        print(repr(model))
    return model


def load_pairs(task: str, model: SplicedModel, n: int, eval_n: int
               ) -> tuple[list[PromptPair], list[PromptPair]]:
    """Discovery and evaluation pairs (n or eval_n may be 0: none): the train and test splits of
    a construction, or the first n and the next eval_n pairs of a JSONL file. Pairs of a file
    that the model's tokenizer cannot take are dropped and counted on one line of stderr; every
    pair is checked against the model's context (cfg.n_ctx) before anything runs."""
    if task in sva.CONSTRUCTIONS:
        train = sva.load(task, "train", n=n, tokenizer=model.tokenizer) if n else []
        test = sva.load(task, "test", n=eval_n, tokenizer=model.tokenizer) if eval_n else []
    else:
        pairs, dropped = sva.load_jsonl(task, tokenizer=model.tokenizer)
        if len(pairs) < n + eval_n:
            why = f" ({dropped})" if dropped else ""
            raise UsageError(
                f"{task} has {len(pairs)} usable pairs for this model{why}; --n {n} + --eval-n "
                f"{eval_n} need {n + eval_n}: lower them"
            )
        if dropped:
            print(f"warning: {task}: {dropped}", file=sys.stderr, flush=True)
        train, test = pairs[:n], pairs[n : n + eval_n]
    for pairs in (train, test):
        if pairs:
            model.tokenize(pairs, max_len=model.cfg.n_ctx)
    return train, test


def read_run(path: Path) -> tuple[Path, Circuit]:
    """(the run directory, its circuit) of a run directory or of its circuit.json."""
    folder = path if path.is_dir() else path.parent
    if not (folder / "circuit.json").is_file():
        raise UsageError(f"{path} holds no circuit.json; pass a run directory written by "
                         "`circuits discover` (or its circuit.json)")
    return folder, read_circuit(folder / "circuit.json")


def circuit_model(circuit: Circuit, args: argparse.Namespace) -> SplicedModel:
    """The model a saved circuit was found on, with its dictionaries at its sites: --model and
    --dictionaries if given, else the circuit's own (``circuit_dictionaries``)."""
    meta = circuit.meta
    name, _, _ = (args.model or meta.model).partition("+")
    known_model(name, given=args.model is not None)
    sites = None if meta.components_only else list(meta.sites)
    return load_model(name, args.device, circuit_dictionaries(circuit, args.dictionaries),
                      sites=sites, quiet=args.quiet)


def circuit_dictionaries(circuit: Circuit, given: str | None) -> bool | str | None:
    """The dictionaries to load a saved circuit's model with: ``given`` (--dictionaries) if
    any; else the circuit's own: False for a component-level circuit, "neurons" for a neuron
    baseline ("+neurons" model), the release/sae_id of each site's dictionary where the meta
    records them (as a release string), else the model's defaults (None)."""
    meta = circuit.meta
    if meta.components_only:
        return False
    if given is not None:
        return given
    if meta.model.endswith("+neurons"):
        return "neurons"
    if meta.dictionaries and all("source" in meta.dictionaries.get(site, {})
                                 for site in meta.sites):
        return "+".join(meta.dictionaries[site]["source"].replace("/", ":", 1)
                        for site in meta.sites)
    return None


def known_model(name: str, *, given: bool) -> None:
    """A circuit's model (or --model) is one saes.load takes; else a UsageError."""
    try:
        resolve_model(name)
    except ValueError as err:
        if given:
            raise UsageError(str(err)) from None
        raise UsageError(f"the circuit's model {name!r} is not one this machine can load "
                         f"({err}); pass --model") from None


def read_circuit(path: Path) -> Circuit:
    """`Circuit.load` (whose ValueError names the file's problem), and an unreadable file as a
    UsageError."""
    try:
        return Circuit.load(path)
    except (FileNotFoundError, ValueError):
        raise
    except OSError as err:
        raise UsageError(f"cannot read the circuit file {path}: {err.strerror}") from err


# ---- progress bars ---------------------------------------------------------------------------
@contextmanager
def progress_bars(shown: bool) -> Iterator[None]:
    """With ``shown`` False (--quiet), no progress bars of ours (progress=False) nor of
    transformers and huggingface_hub (their switch, restored afterwards). saes.loader's
    "dictionaries" bar has no switch; it clears its line when done, and after a failure
    `close_progress_bars` clears it."""
    with transformers_progress_bars(shown):
        yield


def close_progress_bars() -> None:
    """Close the bars a failure left open (each clears its line), so that the error line that
    follows stands alone on stderr."""
    bars = {bar for cls in (tqdm, tqdm_std) for bar in list(getattr(cls, "_instances", ()))}
    for bar in bars:
        bar.close()


# ---- output ----------------------------------------------------------------------------------
def finite(value: float) -> float | None:
    """A metric for JSON: NaN (undefined) as null."""
    return None if math.isnan(value) else value


def file_safe(method: str) -> str:
    return method.replace("*", "_star")
