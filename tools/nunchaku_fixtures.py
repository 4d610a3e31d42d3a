#!/usr/bin/env python3
"""Nunchaku interop fixtures: canonical svdq layers and DeepCompressor's own packing of them.

    python3 tools/nunchaku_fixtures.py setup          # private venv tools/.venv-nunchaku
    python3 tools/nunchaku_fixtures.py make [OUTDIR]  # default tests/data/nunchaku

For each case it builds a small, deterministic canonical layer (svdq's checkpoint layout,
docs/checkpoint.md §2) and writes
    <case>.svdq.safetensors      the layer as svdq::save_quantized stores it
    <case>.nunchaku.safetensors  DeepCompressor's packing of the same layer (Nunchaku layout)
The packing runs DeepCompressor's code from the PyPI wheel deepcompressor-toolkit (module
deepcompressor.backend.nunchaku.utils, pure torch) on CPU torch. Only that module and its two
pure-torch siblings are imported; the package's other dependencies are not installed.
svdq's C++ tests (tests/test_nunchaku.cpp) compare its importer and exporter with these files.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV = os.path.join(HERE, ".venv-nunchaku")
REQ = os.path.join(HERE, "requirements-nunchaku.txt")
VPY = os.path.join(VENV, "bin", "python")


def _req_hash():
    with open(REQ, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def setup():
    stamp = os.path.join(VENV, ".req-sha256")
    if os.path.exists(stamp) and open(stamp).read() == _req_hash():
        return
    if not os.path.exists(VPY):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    normal, nodeps = [], []
    for line in open(REQ):
        line = line.strip()
        if line.startswith("# no-deps:"):
            nodeps.append(line.split(":", 1)[1].strip())
        elif line and not line.startswith("#"):
            normal.append(line)
    pip = [VPY, "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.check_call(pip + normal)
    if nodeps:
        subprocess.check_call(pip + ["--no-deps"] + nodeps)
    with open(stamp, "w") as f:
        f.write(_req_hash())


# ------------------------------------------------------------------------------------------
# Everything below runs inside the venv.

def _bits16(t):
    """Raw 16-bit patterns of a fp16/bf16 torch tensor as a little-endian bytes object."""
    import torch
    return t.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()


def _raw(t):
    import torch
    t = t.contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        return _bits16(t)
    if t.dtype in (torch.int8, torch.uint8, torch.float8_e4m3fn):
        return t.view(torch.uint8).numpy().tobytes()
    if t.dtype == torch.float32:
        return t.numpy().astype("<f4").tobytes()
    raise ValueError(t.dtype)


def _st_dtype(t):
    import torch
    return {torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8", torch.uint8: "U8",
            torch.float8_e4m3fn: "F8_E4M3", torch.float32: "F32"}[t.dtype]


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, dtype string, shape, bytes), laid out in order."""
    header = {"__metadata__": metadata} if metadata else {}
    off = 0
    for name, dt, shape, data in tensors:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, data in tensors:
            f.write(data)


def load_packer():
    """DeepCompressor's Nunchaku packer module, imported without the package's heavy deps."""
    import deepcompressor.backend.nunchaku.utils as u  # imports torch, safetensors only
    return u


# (case name, layer name, N, K, r, storage, bias, use the state-dict wrapper with smooth=None)
CASES = [
    ("int4_n128_k128_r16_f16", "transformer_blocks.0.qkv_proj", 128, 128, 16, "f16", True, False),
    ("int4_n200_k192_r32_bf16", "transformer_blocks.0.out_proj", 200, 192, 32, "bf16", True, False),
    ("int4_n96_k320_r48_f16", "single_transformer_blocks.3.mlp_fc1", 96, 320, 48, "f16", False, False),
    ("int4_n300_k256_r32_bf16_wrapper", "transformer_blocks.1.qkv_proj_context", 300, 256, 32, "bf16",
     True, True),
    ("int4_n64_k128_r0_f16", "transformer_blocks.2.out_proj_context", 64, 128, 0, "f16", True, False),
    # K = 64 is one group: DeepCompressor then packs wscales as a 1-D [Np] vector (pack_scale's
    # group_size == -1 branch), which is not Nunchaku's [Kp/64, Np]; svdq's importer refuses it.
    ("int4_n64_k64_r0_f16_quirk", "transformer_blocks.3.out_proj", 64, 64, 0, "f16", True, False),
]
# Unsigned activations (svdq's act_unsigned, format 2.0): the second linear of a GELU MLP, whose
# input Nunchaku quantizes as GELU(x) + 0.171875, unsigned. DeepCompressor's wrapper is called with
# shift = 0.171875 and folds the shift's branch contribution into the bias.
# (case, layer, N, K, r, storage, bias)
UNSIGNED_CASES = [
    ("int4_n192_k256_r32_bf16_unsigned", "transformer_blocks.0.mlp_fc2", 192, 256, 32, "bf16", True),
    ("int4_n128_k320_r16_f16_unsigned_nobias", "single_transformer_blocks.2.mlp_context_fc2", 128, 320,
     16, "f16", False),
]
SHIFT = 0.171875
# nvfp4: (case, layer, N, K, r, storage, bias, t_w). K is a multiple of 128: for other K,
# DeepCompressor pads the micro scales' group axis to 4 groups only (see README).
NVFP4_CASES = [
    ("nvfp4_n200_k256_r32_bf16", "transformer_blocks.0.qkv_proj", 200, 256, 32, "bf16", True, 0.75),
    ("nvfp4_n128_k384_r16_f16", "single_transformer_blocks.1.out_proj", 128, 384, 16, "f16", False, 1.0),
    # t_w None: per-channel scales c_n (svdq's wcscales, format 2.0), drawn from {1, 1.25, 1.5,
    # 1.75} * 2^{-2..1}; F16 so that code * group scale * c_n is exact in the model dtype.
    ("nvfp4_n160_k256_r16_f16_wcscales", "transformer_blocks.1.qkv_proj", 160, 256, 16, "f16", True, None),
]


def make_case(u, outdir, case, layer, N, K, r, storage, has_bias, wrapper, shift=None):
    import numpy as np
    import torch
    seed = int(hashlib.sha256(case.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    T = torch.float16 if storage == "f16" else torch.bfloat16
    G = K // 64
    codes = torch.tensor(rng.integers(-8, 8, size=(N, K)), dtype=torch.int32)
    # Group scales: fp16 values that are also exact in T (so the file's T scales and svdq's fp16
    # scales hold the same numbers): draw in fp32, round to T, then check fp16 holds them.
    sc = torch.tensor(np.exp2(rng.uniform(-9, -3, size=(N, G))), dtype=torch.float32).to(T)
    assert torch.equal(sc.to(torch.float16).to(T), sc)
    if wrapper:
        smooth = torch.ones(K, dtype=T)
    else:
        smooth = torch.tensor(np.exp2(rng.uniform(-2, 2, size=K)), dtype=torch.float32).to(T)
    down = torch.tensor(rng.standard_normal((K, r)) * 0.05, dtype=torch.float32).to(T)  # [K, r]
    up = torch.tensor(rng.standard_normal((N, r)) * 0.05, dtype=torch.float32).to(T)    # [N, r]
    bias = torch.tensor(rng.standard_normal(N), dtype=torch.float32).to(T) if has_bias else None
    if shift is not None:
        # DeepCompressor's input: lora_down *before* the division by the smoothing factors (its
        # wrapper divides in float64, then rounds to T); svdq's lora_down is that quotient rounded.
        # The canonical bias is the wrapper's fold, computed here independently in float64 (same
        # association as the wrapper): bias + (lora_up @ (down / s)^T) @ shift, rounded once to T.
        down_raw = torch.tensor(rng.standard_normal((K, r)) * 0.05, dtype=torch.float32).to(T)
        div64 = down_raw.t().to(torch.float64) / smooth.to(torch.float64).unsqueeze(0)  # [r, K]
        down = div64.t().to(T).contiguous()
        b64 = torch.zeros(N, dtype=torch.float64) if bias is None else bias.to(torch.float64)
        fold = (up.to(torch.float64) @ div64) @ torch.full((K, 1), shift, dtype=torch.float64)
        bias_c = (b64 + fold.view(-1)).to(T)
        has_bias_c = True
    else:
        bias_c, has_bias_c = bias, has_bias

    # --- canonical svdq file (docs/checkpoint.md §2) ---
    qw = ((codes[:, 1::2] & 0xF) << 4 | (codes[:, 0::2] & 0xF)).to(torch.uint8)
    meta = {"format": "int4", "group_size": 64, "rank": r, "in_features": K, "out_features": N,
            "storage": storage, "bias": has_bias_c}
    if shift is not None:
        meta.update({"act_unsigned": True, "act_shift": shift, "format_version": "2.0"})
    tens = [(layer + ".qweight", "U8", [N, K // 2], qw.numpy().tobytes()),
            (layer + ".wscales", "F16", [N, G], _bits16(sc.to(torch.float16))),
            (layer + ".smooth", _st_dtype(smooth), [K], _bits16(smooth)),
            (layer + ".lora_down", _st_dtype(down), [K, r], _bits16(down)),
            (layer + ".lora_up", _st_dtype(up), [N, r], _bits16(up))]
    if has_bias_c:
        tens.append((layer + ".bias", _st_dtype(bias_c), [N], _bits16(bias_c)))
    write_safetensors(os.path.join(outdir, case + ".svdq.safetensors"), tens,
                      {"svdq.layer." + layer: json.dumps(meta, sort_keys=True)})

    # --- DeepCompressor's packing of the same layer ---
    # The packer divides the weight by its scale in fp32 and rounds; codes * scale rounded to T
    # divides back to the exact code (|error| <= 8 * 2^-9 < 0.5), checked here.
    w = (codes.to(torch.float32).view(N, G, 64) * sc.to(torch.float32).view(N, G, 1)).view(N, K).to(T)
    back = (w.to(torch.float32).view(N, G, 64) / sc.to(torch.float32).view(N, G, 1)).round()
    assert torch.equal(back.view(N, K).to(torch.int32), codes)
    scale4 = sc.view(N, 1, G, 1)
    lora = (down.t().contiguous(), up) if r > 0 else None
    if shift is not None:
        # The wrapper with the real smoothing factors and the shift: it divides lora_down by them
        # and folds the shift into the bias itself.
        import importlib.util
        spec = importlib.util.spec_from_file_location(
            "deepcompressor.backend.nunchaku.convert", os.path.join(os.path.dirname(u.__file__), "convert.py"))
        conv = importlib.util.module_from_spec(spec)
        sys.modules["tqdm"] = sys.modules.get("tqdm") or type(sys)("tqdm")
        spec.loader.exec_module(conv)
        sd = conv.convert_to_nunchaku_w4x4y16_linear_state_dict(
            weight=w, scale=scale4, bias=bias, smooth=smooth, lora=(down_raw.t().contiguous(), up),
            shift=torch.tensor(shift, dtype=T))
    elif wrapper:
        # The real entry point, convert.convert_to_nunchaku_w4x4y16_linear_state_dict, with no
        # smoothing (so it does not re-divide lora_down). Imported by file: convert.py needs tqdm.
        import importlib.util
        spec = importlib.util.spec_from_file_location(
            "deepcompressor.backend.nunchaku.convert", os.path.join(os.path.dirname(u.__file__), "convert.py"))
        conv = importlib.util.module_from_spec(spec)
        sys.modules["tqdm"] = sys.modules.get("tqdm") or type(sys)("tqdm")
        spec.loader.exec_module(conv)
        sd = conv.convert_to_nunchaku_w4x4y16_linear_state_dict(
            weight=w, scale=scale4, bias=bias, smooth=None, lora=lora)
    else:
        # convert_to_nunchaku_w4x4y16_linear_weight is what the wrapper calls after dividing the
        # "a" weight by the smoothing factors; svdq's lora_down is already divided, so it is passed
        # here directly. The keys are the wrapper's (smooth_fused = False).
        qweight, wscales, pbias, psmooth, plora, _ = u.convert_to_nunchaku_w4x4y16_linear_weight(
            w, scale=scale4, bias=bias, smooth=smooth, lora=lora, float_point=False)
        sd = {"qweight": qweight, "wscales": wscales, "bias": pbias, "smooth_orig": psmooth,
              "smooth": psmooth.clone()}
        if plora is not None:
            sd["lora_down"], sd["lora_up"] = plora
    ntens = []
    for key in ["qweight", "wscales", "bias", "smooth", "smooth_orig", "lora_down", "lora_up"]:
        if key in sd:
            t = sd[key]
            ntens.append((layer + "." + key, _st_dtype(t), list(t.shape), _raw(t)))
    rp = sd["lora_down"].shape[1] if "lora_down" in sd else 0
    qc = {"method": "svdquant",
          "weight": {"dtype": "int4", "scale_dtype": None, "group_size": 64},
          "activation": {"dtype": "int4", "scale_dtype": None, "group_size": 64},
          "rank": rp}
    nmeta = {"quantization_config": json.dumps(qc),
             "svdq.nunchaku." + layer: json.dumps({"in_features": K, "out_features": N, "rank": r},
                                                 separators=(",", ":"))}
    write_safetensors(os.path.join(outdir, case + ".nunchaku.safetensors"), ntens, nmeta)
    return [t[0] + " " + t[1] + " " + str(t[2]) for t in ntens]


def make_nvfp4_case(u, outdir, case, layer, N, K, r, storage, has_bias, tw):
    import numpy as np
    import torch
    seed = int(hashlib.sha256(case.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    T = torch.float16 if storage == "f16" else torch.bfloat16
    G = K // 16
    codes = torch.tensor(rng.integers(0, 16, size=(N, K)), dtype=torch.int32)
    codes[codes == 8] = 0  # DeepCompressor's fp_quantize never emits -0 (argmin ties to +0)
    book = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=torch.float64)
    vals = book[codes.long()]
    sub8 = torch.tensor(np.exp2(rng.uniform(-6, 2, size=(N, G))), dtype=torch.float32).to(torch.float8_e4m3fn)
    sub = sub8.to(torch.float64)
    assert (sub > 0).all()
    smooth = torch.tensor(np.exp2(rng.uniform(-2, 2, size=K)), dtype=torch.float32).to(T)
    down = torch.tensor(rng.standard_normal((K, r)) * 0.05, dtype=torch.float32).to(T)
    up = torch.tensor(rng.standard_normal((N, r)) * 0.05, dtype=torch.float32).to(T)
    bias = torch.tensor(rng.standard_normal(N), dtype=torch.float32).to(T) if has_bias else None
    if tw is None:
        mant = torch.tensor(rng.integers(0, 4, size=N), dtype=torch.float64) * 0.25 + 1.0
        chan = (mant * torch.exp2(torch.tensor(rng.integers(-2, 2, size=N), dtype=torch.float64))).to(T)
    else:
        chan = torch.full((N,), tw, dtype=T)

    qw = ((codes[:, 1::2] & 0xF) << 4 | (codes[:, 0::2] & 0xF)).to(torch.uint8)
    meta = {"format": "nvfp4", "group_size": 16, "rank": r, "in_features": K, "out_features": N,
            "storage": storage, "bias": has_bias}
    if tw is None:
        meta["format_version"] = "2.0"
    tens = [(layer + ".qweight", "U8", [N, K // 2], qw.numpy().tobytes()),
            (layer + ".wscales", "F8_E4M3", [N, G], _raw(sub8)),
            (layer + ".wtscale", "F32", [1], struct.pack("<f", 1.0 if tw is None else tw)),
            (layer + ".act_tscale", "F32", [1], struct.pack("<f", 1.0)),
            (layer + ".smooth", _st_dtype(smooth), [K], _bits16(smooth)),
            (layer + ".lora_down", _st_dtype(down), [K, r], _bits16(down)),
            (layer + ".lora_up", _st_dtype(up), [N, r], _bits16(up))]
    if has_bias:
        tens.append((layer + ".bias", _st_dtype(bias), [N], _bits16(bias)))
    if tw is None:
        tens.append((layer + ".wcscales", _st_dtype(chan), [N], _bits16(chan)))
    write_safetensors(os.path.join(outdir, case + ".svdq.safetensors"), tens,
                      {"svdq.layer." + layer: json.dumps(meta, sort_keys=True)})

    # W = code * group scale * t_w, exact in T (checked); DeepCompressor's nvfp4 inputs: the
    # per-channel scale (all t_w; it becomes wcscales) and the group-16 subscale (wscales).
    wexact = (vals.view(N, G, 16) * sub.view(N, G, 1) * chan.to(torch.float64).view(N, 1, 1)).view(N, K)
    w = wexact.to(T)
    assert torch.equal(w.to(torch.float64), wexact)
    scale = chan.view(N, 1, 1, 1)
    subscale = sub.to(T).view(N, 1, G, 1)
    lora = (down.t().contiguous(), up) if r > 0 else None
    qweight, wcscales, pbias, psmooth, plora, wscales = u.convert_to_nunchaku_w4x4y16_linear_weight(
        w, scale=scale, bias=bias, smooth=smooth, lora=lora, float_point=True, subscale=subscale)
    sd = {"qweight": qweight, "wscales": wscales, "wcscales": wcscales, "bias": pbias,
          "smooth": psmooth.clone(), "smooth_orig": psmooth}
    if plora is not None:
        sd["lora_down"], sd["lora_up"] = plora
    ntens = [(layer + "." + k, _st_dtype(t), list(t.shape), _raw(t)) for k, t in sd.items()]
    rp = sd["lora_down"].shape[1] if "lora_down" in sd else 0
    qc = {"method": "svdquant",
          "weight": {"dtype": "fp4_e2m1_all", "scale_dtype": [None, "fp8_e4m3_nan"], "group_size": 16},
          "activation": {"dtype": "fp4_e2m1_all", "scale_dtype": "fp8_e4m3_nan", "group_size": 16},
          "rank": rp}
    nmeta = {"quantization_config": json.dumps(qc),
             "svdq.nunchaku." + layer: json.dumps({"in_features": K, "out_features": N, "rank": r},
                                                 separators=(",", ":"))}
    write_safetensors(os.path.join(outdir, case + ".nunchaku.safetensors"), ntens, nmeta)
    return [t[0] + " " + t[1] + " " + str(t[2]) for t in ntens]


def make(outdir):
    import torch
    import deepcompressor
    u = load_packer()
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    for c in CASES:
        lines = make_case(u, outdir, *c)
        print(c[0], "\n  " + "\n  ".join(lines))
    for c in UNSIGNED_CASES:
        lines = make_case(u, outdir, *c, wrapper=False, shift=SHIFT)
        print(c[0], "\n  " + "\n  ".join(lines))
    for c in NVFP4_CASES:
        lines = make_nvfp4_case(u, outdir, *c)
        print(c[0], "\n  " + "\n  ".join(lines))
    print("torch", torch.__version__, "deepcompressor", getattr(deepcompressor, "__version__", "?"))


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else "make"
    if cmd == "setup":
        setup()
        return
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        setup()
        os.execv(VPY, [VPY, os.path.abspath(__file__)] + sys.argv[1:])
    if cmd == "make":
        make(sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests", "data", "nunchaku"))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
