"""Train dictionaries for Gemma-3-270M on the corpus of saes.trained.corpus, with sae_lens.

    python -m saes.trained.train [--sites resid_5,resid_9,resid_12,resid_15] [--tokens N]

sae_lens' `MultiSAETrainingRunner` trains one BatchTopK dictionary per site in lockstep from one
shared forward pass of Gemma (its `ActivationsStore` streams activations from the model through
a mixing buffer; nothing holds them all). BatchTopK saves as a JumpReLU SAE (the batch threshold
becomes every feature's threshold), the architecture of Gemma Scope 2, so the result loads as
Gemma Scope 2 does: a sae_lens SAE read by `saes.dictionary.Dictionary.from_sae_lens`.

Resumable: sae_lens checkpoints the dictionaries, their optimizers and the store's position in
the corpus every ``--checkpoint-tokens`` tokens and on SIGINT/SIGTERM; running the same command
again continues from the newest checkpoint (older ones are deleted). An uninterrupted run from a
seed reproduces its dictionaries; a resumed run continues the same corpus order, but its mixing
buffer refills differently, so it is close to, not identical with, an uninterrupted one.

The rows fed to Gemma are the training split packed into ``context`` tokens, each row beginning
with BOS; BOS positions are left out of training (their activations are outliers, and Gemma
Scope 2 leaves them out too). Gemma runs under bfloat16 autocast while streaming (1.5x faster on
CPU); the dictionaries train in float32.

Each dictionary's decoder bias starts at the mean activation of its site (over the first
``mean_rows`` rows, BOS left out), in sae_lens' normalized units. Gemma's residual stream is
mostly its mean (91-94% of E|x|^2 at resid_5 and resid_9): from a zero bias, a thousand steps of
Adam move the bias by well under that mean's norm, so features learn the mean instead, and most
of them die (the first run, without this: 94% dead at resid_5, agreement at chance spliced
without the error term).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from saes.sites import Site, site_by_name
from saes.trained import corpus as corpus_module
from saes.trained.paths import checkpoint_dir, corpus_dir, dictionaries_dir

log = logging.getLogger(__name__)

RESIDUAL_SITES = ("resid_5", "resid_9", "resid_12", "resid_15")  # Gemma Scope 2's layers
TRAINING_FILE = "training.json"


@dataclass(frozen=True)
class TrainConfig:
    sites: tuple[str, ...] = RESIDUAL_SITES
    d_sae: int = 4096
    k: int = 32  # mean L0 of the BatchTopK dictionaries
    tokens: int = 1_000_000
    batch: int = 1024  # activations per step
    lr: float = 5e-4
    context: int = 128
    seed: int = 0
    checkpoint_tokens: int = 50_000
    python_docs_tokens: int = 1_000_000  # cap: the Python docs would be 62% of the corpus
    mean_rows: int = 32  # rows whose mean activation starts each decoder bias (0: zero bias)

    @property
    def run_name(self) -> str:
        """Names the checkpoint folder: the same config resumes the same run."""
        sites = "+".join(self.sites)
        init = f"-m{self.mean_rows}" if self.mean_rows else ""
        return (f"{sites}-w{self.d_sae}-k{self.k}-t{self.tokens}-b{self.batch}-s{self.seed}"
                f"{init}")


def packed_rows(cfg: TrainConfig, tokenizer, documents: list[dict],
                max_rows: int | None = None) -> list[list[int]]:
    """Documents tokenized and packed into rows of cfg.context tokens ([BOS] + text), shuffled
    with the seed; the Python documentation capped at cfg.python_docs_tokens. ``max_rows``:
    stop tokenizing once there are that many (the first rows of the same stream, unshuffled)."""
    rng = random.Random(cfg.seed)
    documents = sorted(documents, key=lambda d: d["id"])
    rng.shuffle(documents)
    stream: list[int] = []
    python_docs = 0
    for doc in documents:
        ids = tokenizer(doc["text"] + "\n\n", add_special_tokens=False)["input_ids"]
        if doc["id"].startswith("python-docs/"):
            if python_docs >= cfg.python_docs_tokens:
                continue
            python_docs += len(ids)
        stream.extend(ids)
        if max_rows is not None and len(stream) >= max_rows * (cfg.context - 1):
            break
    width = cfg.context - 1
    rows = [[tokenizer.bos_token_id] + stream[i : i + width]
            for i in range(0, len(stream) - width + 1, width)]
    if max_rows is not None:
        return rows[:max_rows]
    rng.shuffle(rows)
    return rows


@torch.no_grad()
def mean_activations(model, sites: list[Site], rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """Each site's mean activation over the rows (BOS positions left out), scaled as sae_lens
    scales its inputs ("expected_average_only_in": by sqrt(d_in) / the mean norm)."""
    stored: dict[str, torch.Tensor] = {}

    def keep(site: Site):
        def hook(x: torch.Tensor, hook) -> None:
            x = site.vectors(x)[:, 1:]
            stored[site.name] = x.reshape(-1, x.shape[-1]).float()
        return hook

    last = max(max(s.layer, 0) for s in sites)  # embed (-1) reads block 0's input
    with model.hooks(fwd_hooks=[(s.hook_name, keep(s)) for s in sites]):
        model(torch.tensor(rows, device=model.cfg.device), return_type=None,
              stop_at_layer=last + 1)
    means = {}
    for s in sites:
        x = stored[s.name]
        means[s.name] = x.mean(0) * x.shape[-1] ** 0.5 / x.norm(dim=-1).mean()
    return means


def _latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under folder (sae_lens names them by samples seen)."""
    done = [p for p in folder.glob("*") if p.is_dir() and p.name.isdigit()
            and (p / "activations_store_state.safetensors").exists()]
    return max(done, key=lambda p: int(p.name), default=None)


def _prune(folder: Path, keep: Path | None) -> None:
    for p in folder.glob("*"):
        if p.is_dir() and p != keep:
            shutil.rmtree(p)


def _site(cfg_model, name: str) -> Site:
    return site_by_name(cfg_model, name)


def train(cfg: TrainConfig, *, out: Path | None = None, corpus: Path | None = None,
          checkpoints: Path | None = None, model=None) -> Path:
    """Train (or resume) and save the dictionaries into out/<site>/; returns out."""
    from datasets import Dataset
    from sae_lens import BatchTopKTrainingSAEConfig, LoggingConfig
    from sae_lens.multi_sae_training_runner import (
        MultiSAETrainingRunner,
        MultiSAETrainingRunnerConfig,
    )

    from saes.gemma import load_gemma

    out = out or dictionaries_dir()
    corpus = corpus or corpus_dir()
    base = checkpoints or checkpoint_dir()
    run_dir = base / cfg.run_name  # sae_lens appends the run's id (wandb_id) to checkpoint_path
    if not (corpus / "train.jsonl").exists():
        raise FileNotFoundError(
            f"no corpus in {corpus}; build it with: python -m saes.trained.corpus")
    model = model or load_gemma()
    sites = [_site(model.cfg, name) for name in cfg.sites]
    start = time.perf_counter()
    rows = packed_rows(cfg, model.tokenizer, list(corpus_module.read(corpus / "train.jsonl")))
    if len(rows) * (cfg.context - 1) < cfg.tokens:
        log.warning("the corpus has %d tokens in rows, fewer than --tokens %d: sae_lens will "
                    "go round it again", len(rows) * (cfg.context - 1), cfg.tokens)
    dataset = Dataset.from_dict({"input_ids": rows})
    log.info("%d rows of %d tokens in %.0fs", len(rows), cfg.context, time.perf_counter() - start)

    resume = _latest_checkpoint(run_dir) if run_dir.exists() else None
    if run_dir.exists():
        _prune(run_dir, resume)
    steps = cfg.tokens // cfg.batch
    sae_cfgs = {
        s.name: BatchTopKTrainingSAEConfig(d_in=s.width(model.cfg), d_sae=cfg.d_sae, k=cfg.k,
                                           normalize_activations="expected_average_only_in")
        for s in sites
    }
    runner_cfg = MultiSAETrainingRunnerConfig(
        saes=sae_cfgs,
        hook_names={s.name: s.hook_name for s in sites},
        model_name=model.cfg.model_name,
        dataset_path="saes.trained.corpus",
        context_size=cfg.context,
        prepend_bos=False,  # the rows begin with BOS
        exclude_special_tokens=[model.tokenizer.bos_token_id],
        training_tokens=cfg.tokens,
        train_batch_size_tokens=cfg.batch,
        store_batch_size_prompts=16,
        n_batches_in_buffer=max(8, -(-cfg.batch // cfg.context)),  # sae_lens: >= one batch
        lr=cfg.lr,
        lr_warm_up_steps=steps // 20,
        lr_decay_steps=steps // 5,
        lr_end=cfg.lr / 10,
        dead_feature_window=max(steps // 4, 1),
        feature_sampling_window=max(steps // 4, 1),
        n_batches_for_norm_estimate=20,
        autocast_lm=True,
        seed=cfg.seed,
        device=str(next(model.parameters()).device),
        n_checkpoints=max(cfg.tokens // cfg.checkpoint_tokens - 1, 0),
        checkpoint_path=str(base),
        output_path=str(out),
        resume_from_checkpoint=str(resume) if resume else None,
        logger=LoggingConfig(log_to_wandb=False, wandb_id=cfg.run_name),
    )
    torch.manual_seed(cfg.seed)
    runner = MultiSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=model)
    if resume:
        log.info("resuming from %s", resume)
    elif cfg.mean_rows:  # a resumed run has its bias in the checkpoint
        for name, mean in mean_activations(model, sites, rows[: cfg.mean_rows]).items():
            runner.saes[name].b_dec.data.copy_(mean)
    runner.run()
    shutil.rmtree(run_dir, ignore_errors=True)  # done: a rerun of this config starts afresh
    manifest = json.loads((corpus / "corpus.json").read_text())
    record = {
        "config": asdict(cfg),
        "resumed_from": str(resume.name) if resume else None,
        "seconds_this_run": round(time.perf_counter() - start, 1),
        "corpus": manifest,
        "training_rows": len(rows),
    }
    (out / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", default=",".join(defaults.sites))
    parser.add_argument("--tokens", type=int, default=defaults.tokens)
    parser.add_argument("--d-sae", type=int, default=defaults.d_sae)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-tokens", type=int, default=defaults.checkpoint_tokens)
    parser.add_argument("--mean-rows", type=int, default=defaults.mean_rows,
                        help="rows whose mean activation starts each decoder bias (0: a zero "
                        f"bias, as sae_lens starts it; default {defaults.mean_rows})")
    parser.add_argument("--out", type=Path, default=None, help=f"(default {dictionaries_dir()})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = TrainConfig(sites=tuple(args.sites.split(",")), tokens=args.tokens, d_sae=args.d_sae,
                      k=args.k, batch=args.batch, seed=args.seed,
                      checkpoint_tokens=args.checkpoint_tokens, mean_rows=args.mean_rows)
    print(train(cfg, out=args.out))


if __name__ == "__main__":
    main()
