"""Node attribution: agreement with exact patching, and what each method costs.

    python benchmarks/attribution.py [--n 100] [--pythia] [--device cpu]

Prints markdown tables:
(a) Pearson r of atp, atp*, ig and relp against exact activation patching, per site and pooled
    over all sites: evaluation.agreement on the scores summed over positions and averaged over
    examples (the table of `circuits compare`): only nodes that moved (non-zero in either method)
    are compared, error nodes included; atp* (magnitudes, Kramár et al. Eq. 11) is compared with
    |exact|.
(b) Wall (and CPU) time and peak memory per method (--timed, default all) on n prompts (tasks.sva
    --construction, default across_pp, or ioi, with the model's tokenizer), and the ratios relp/atp,
    ig/atp, atp*/atp, exact/atp from the same run. exact is timed on the prompts of table (a)
    (--exact-n / --agreement-n when given) and its time scaled to n prompts for the ratio (said in
    the output). Peak memory: CUDA max allocated on a GPU; on CPU the peak resident set size above
    the level before the method ran, sampled every 5 ms, each method in a fresh process.

Model: the organism (saes/organism/weights), or --model NAME [--dictionaries STRING] (as
`saes.load`; e.g. --model gemma-3-270m --dictionaries trained). --methods picks the compared
methods (default atp, atp*, ig, relp); ``relp:RULES`` is relp with the LRP rules RULES
("ln+identity", or "none"), e.g. --methods atp relp relp:ln relp:identity relp:none.
--pythia: the full-size offline Pythia-70M (needs HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<dir from
`python -m saes.offline_cache --d-sae 32768 --out <dir>`); exact is skipped there unless
--exact-n is given (one forward per moved node).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from circuits import attribute  # noqa: E402
from circuits.methods import method  # noqa: E402
from evaluation.agreement import POOLED, agreement, agreement_table  # noqa: E402
from saes import SplicedModel, load  # noqa: E402
from tasks import ioi, sva  # noqa: E402
from tasks.pairs import Dataset  # noqa: E402

COMPARED = ("atp", "atp*", "ig", "relp")  # against exact


def variant(spec: str) -> tuple[str, tuple[str, ...] | None]:
    """"relp:ln+identity" -> ("relp", ("ln", "identity")); "relp:none" -> ("relp", ());
    "atp" -> ("atp", None) (the method's own rules)."""
    name, _, rules = spec.partition(":")
    if not rules:
        return name, None
    return name, () if rules == "none" else tuple(rules.split("+"))


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or sampled RSS above the starting level."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.process = psutil.Process(os.getpid())
        self.base = self.process.memory_info().rss
        self.top = self.base
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.top = max(self.top, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.top, self.process.memory_info().rss) - self.base


def pick_model(args) -> tuple[SplicedModel, str]:
    if args.pythia:
        if os.environ.get("HF_HUB_OFFLINE") != "1" or "HF_HUB_CACHE" not in os.environ:
            sys.exit("--pythia needs HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<dir built by "
                     "`python -m saes.offline_cache --d-sae 32768 --out <dir>`>")
        return load("pythia-70m-deduped", device=args.device), "Pythia-70M-deduped (offline, " \
            "random weights of the real shapes, 32768 features per site)"
    if args.model != "organism" or args.dictionaries is not None:
        model = load(args.model, dictionaries=args.dictionaries, device=args.device)
        return model, f"{args.model} with dictionaries {args.dictionaries or 'by default'}"
    return load("organism", device=args.device), "the model organism"


def agreement_markdown(model: SplicedModel, data: Dataset, args) -> str:
    """evaluation.agreement of atp, atp*, ig and relp against exact (averaged scores summed over
    positions): the same table as `circuits compare`."""
    def scores(spec: str):
        return attribute(model, data, variant(spec)[0], aggregation="sum",
                         batch_size=args.batch_size, progress=args.progress,
                         **own_options(spec, args))

    exact = scores("exact")
    compared = {m: scores(m) for m in args.methods}
    table = agreement(compared, exact, by="site")
    pooled = table[table["site"] == POOLED].set_index("method")["n_nodes"]
    counts = ", ".join(f"{m} {n}" for m, n in pooled.items())
    return (agreement_table(table) + f"\n\nNodes compared (pooled): {counts}.\n\n"
            + largest_nodes(exact, compared))


def largest_nodes(exact, compared: dict, k: int = 8) -> str:
    """The k nodes with the largest |exact| effect, and each method's score of them."""
    nodes = [(site, i) for site, v in exact.sites.items() for i in range(v.numel())]
    values = torch.cat([v.flatten() for v in exact.sites.values()])
    top = [nodes[i] for i in values.abs().argsort(descending=True)[:k].tolist()]
    lines = ["Largest exact effects (err: the site's error node):", "",
             "| node | exact | " + " | ".join(compared) + " |",
             "|---|---:|" + "---:|" * len(compared)]
    for site, i in top:
        name = f"{site}/err" if i == exact.error_index(site) and not exact.components_only \
            else f"{site}/{i}"
        cells = [f"{float(s.sites[site].flatten()[i]):+.3f}" for s in compared.values()]
        lines.append(f"| {name} | {float(exact.sites[site].flatten()[i]):+.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def own_options(spec: str, args) -> dict:
    """The method's own options among --steps and --exact-batch, and the rules of relp:RULES."""
    name, rules = variant(spec)
    given = {"steps": args.steps, "exact_batch": args.exact_batch, "rules": rules}
    return {k: v for k, v in given.items()
            if k in method(name).option_names and (k != "rules" or v is not None)}


def timed(model: SplicedModel, data: Dataset, spec: str, args) -> tuple[float, float]:
    """(wall, CPU) seconds of one attribute() call."""
    wall, cpu = time.perf_counter(), time.process_time()
    attribute(model, data, variant(spec)[0], batch_size=args.batch_size, progress=args.progress,
              **own_options(spec, args))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def child_measure(model: SplicedModel, data: Dataset, spec: str, args) -> dict[str, float]:
    """In a fresh process: peak memory (and time) of one run after a warm-up."""
    attribute(model, data.subset([0, 1]), variant(spec)[0], progress=False,
              **own_options(spec, args))  # warm-up
    with PeakMemory(model.device) as memory:
        wall, cpu = timed(model, data, spec, args)
    return {"peak": memory.peak, "wall": wall, "cpu": cpu}


def exact_n(args, n: int) -> int:
    """Prompts that exact runs on, for table (a) and its timing: --agreement-n, else --exact-n
    with --pythia, else all n; never more than n."""
    return min(n, args.agreement_n or (args.exact_n if args.pythia else n) or n)


def cost_table(model: SplicedModel, data: Dataset, methods: tuple[str, ...], args,
               argv: list[str]) -> str:
    """Peak memory: each method in a fresh child process, so that the peak is its own. Time:
    the gradient methods interleaved in this process for ``--rounds`` rounds, best round each
    (the ratios come from one run on one machine state); exact: its child's single run on the
    first exact_n prompts, its × atp ratio per prompt."""
    memory = {}
    for m in methods:
        child = subprocess.run(
            [sys.executable, __file__, *argv, "--child", m], capture_output=True, text=True,
            check=False,
        )
        if child.returncode != 0:
            sys.exit(f"child for {m} failed:\n{child.stderr[-3000:]}")
        memory[m] = json.loads(child.stdout.strip().splitlines()[-1])
    times = {m: (memory[m]["wall"], memory[m]["cpu"]) for m in methods}
    fast = [m for m in methods if m != "exact"]
    attribute(model, data.subset([0, 1]), "atp", progress=False)  # warm-up
    for _ in range(args.rounds):
        for m in fast:
            wall, cpu = timed(model, data, m, args)
            times[m] = (min(times[m][0], wall), min(times[m][1], cpu))
    base_wall, base_cpu = times["atp"]
    n_exact = exact_n(args, len(data))
    lines = [
        "| method | prompts | wall time (s) | × atp | CPU time (s) | × atp | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        wall, cpu = times[m]
        prompts = n_exact if m == "exact" else len(data)
        scale = len(data) / prompts  # × atp per prompt
        lines.append(f"| {m} | {prompts} | {wall:.2f} | {wall * scale / base_wall:.1f} | "
                     f"{cpu:.2f} | {cpu * scale / base_cpu:.1f} | "
                     f"{memory[m]['peak'] / 2**20:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="agreement prompts for timings")
    parser.add_argument("--agreement-n", type=int, default=None,
                        help="prompts for the agreement table and exact's timing (default: --n; "
                        "--exact-n with --pythia)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="ig steps")
    parser.add_argument("--pythia", action="store_true", help="full-size offline Pythia-70M")
    parser.add_argument("--exact-n", type=int, default=None,
                        help="with --pythia: also build table (a) and time exact on this many")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--construction", default="across_pp",
                        help="an agreement construction (tasks.sva), or ioi")
    parser.add_argument("--exact-batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (best kept)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--model", default="organism", help="a model saes.load knows")
    parser.add_argument("--dictionaries", default=None,
                        help="as saes.load's dictionaries= (e.g. trained, a release string)")
    parser.add_argument("--methods", nargs="+", default=list(COMPARED),
                        help="methods compared with exact; relp:RULES for a rule variant")
    parser.add_argument("--timed", nargs="*", default=None,
                        help="methods in the cost table, exact among them (default: exact and "
                        "every compared method; atp is always timed, as the base of the ratios)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args()

    model, description = pick_model(args)
    if args.construction == "ioi":  # two templates of one length, so every prompt has one
        pairs = ioi.generate(args.n, seed=0, tokenizer=model.tokenizer,
                             templates=("then", "when"))
    else:
        pairs = sva.generate(args.construction, args.n, seed=0, tokenizer=model.tokenizer)
    data = model.tokenize(pairs)
    if args.child:
        if args.child == "exact":  # exact is timed on the prompts of table (a)
            data = data.subset(slice(0, exact_n(args, len(data))))
        print(json.dumps(child_measure(model, data, args.child, args)))
        return
    widths = sorted({d.d_sae for d in model.dictionaries.values()})
    print(f"# Node attribution on {description}\n")
    print(f"{len(model.dictionaries)} spliced sites, d_sae {widths}, {args.construction} "
          f"prompts of {data.seq_len} tokens, device {model.device}, "
          f"{torch.get_num_threads()} CPU threads, ig steps {args.steps}, batch size "
          f"{args.batch_size}.\n")

    run_exact = not args.pythia or args.exact_n is not None
    agreement_n = exact_n(args, len(data))
    if run_exact:
        print(f"## (a) Pearson r against exact patching ({agreement_n} prompts; "
              "evaluation.agreement, as `circuits compare`: scores summed over positions, mean "
              "over prompts, nodes that moved in either method, error nodes included, atp* "
              "against |exact|)\n")
        print(agreement_markdown(model, data.subset(slice(0, agreement_n)), args))
        print()
    # atp is every ratio's base
    timed_methods = args.methods if args.timed is None else args.timed
    time_exact = run_exact and (args.timed is None or "exact" in args.timed)
    methods = (*(["exact"] if time_exact else []),
               *dict.fromkeys(["atp", *(m for m in timed_methods if m != "exact")]))
    print(f"## (b) Cost on {len(data)} prompts\n")
    print(cost_table(model, data, methods, args, argv))
    exact_note = ""
    if time_exact:
        exact_note = (f" exact is timed on the {agreement_n} prompts of table (a); its × atp "
                      f"ratios are per prompt (its time × {len(data)}/{agreement_n}).")
    print(f"\nTimes: best of {args.rounds} interleaved rounds in one process (exact: one run); "
          "peak memory: each method in a fresh process, above its level after loading the "
          "model and a warm-up run. CPU time is shown because the CPU may be shared."
          + exact_note)


if __name__ == "__main__":
    main()
