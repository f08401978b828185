"""Plain-data messages between the grader and a sandbox: JSON for structure, safetensors for tensors. No pickle.

A message is `len(header) (4 bytes) + JSON header + safetensors blob`. What can travel:
None, bool, int, float, str, bytes, list, tuple, dict, torch.Tensor / nn.Parameter, numpy arrays, torch.dtype,
torch.device, torch.Size, torch.Generator (its state), and objects of minimistral's own classes (dataclasses,
modules, the cache), rebuilt field by field without running any constructor. Modules of torch.nn (Linear,
Embedding, ModuleList, ...) travel the same way. Anything else (a function, an open file) is refused by name.
Decoding only ever imports classes from `minimistral.*` (not `minimistral.labs`) or `torch.nn.modules.*`.
"""

from __future__ import annotations

import base64
import importlib
import json
import struct

import torch
from torch import nn

MAX_MESSAGE = 1 << 31  # 2 GiB: a reply larger than this is refused (and the sandbox is stopped)
# The classes of the labs that travel: checks hand them to a student's function in place of a model (plain
# modules; nothing runs when one is rebuilt, and the grader never calls one a sandbox sends back).
TRAVELLING = {"minimistral.labs.checks:ModelProbe", "minimistral.labs.checks:BatchLimit"}
_NN_INTERNAL = None


class CodecError(Exception):
    pass


def _class_path(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _allowed(module: str) -> bool:
    return (module == "minimistral" or module.startswith("minimistral.")) and not module.startswith(
        "minimistral.labs") or module.startswith("torch.nn.modules.")


def _load_class(path: str):
    module, _, qualname = path.partition(":")
    if not _allowed(module) and path not in TRAVELLING:
        raise CodecError(f"class {path} is not one the grader rebuilds")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise CodecError(f"{path} is not a class")
    return obj


def _nn_internal() -> set:
    global _NN_INTERNAL
    if _NN_INTERNAL is None:
        _NN_INTERNAL = set(nn.Module().__dict__)
    return _NN_INTERNAL


def encode(obj) -> bytes:
    tensors: dict[str, torch.Tensor] = {}

    def tensor(t: torch.Tensor) -> str:
        key = str(len(tensors))
        t = t.detach().to("cpu")
        tensors[key] = t.contiguous().clone() if t.numel() else torch.empty(t.shape, dtype=t.dtype)
        return key

    def enc(x, depth=0):
        if depth > 100:
            raise CodecError("nested more than 100 levels deep")
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            return {"__float__": repr(x)}  # nan and inf survive, and JSON stays standard
        if isinstance(x, torch.Tensor):
            return {"__tensor__": tensor(x), "param": isinstance(x, nn.Parameter),
                    "grad": bool(x.requires_grad)}
        if isinstance(x, (list, tuple)) and not hasattr(x, "_fields") or isinstance(x, torch.Size):
            items = [enc(v, depth + 1) for v in x]
            return items if type(x) is list else {"__tuple__": items}
        if isinstance(x, dict):
            return {"__dict__": [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in x.items()]}
        if isinstance(x, (bytes, bytearray)):
            return {"__bytes__": base64.b64encode(bytes(x)).decode()}
        if isinstance(x, torch.dtype):
            return {"__dtype__": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"__device__": str(x)}
        if isinstance(x, torch.Generator):
            return {"__generator__": tensor(x.get_state())}
        if type(x).__module__ == "numpy" and hasattr(x, "dtype"):
            import numpy as np
            if isinstance(x, np.ndarray):
                return {"__ndarray__": tensor(torch.from_numpy(np.ascontiguousarray(x)))}
            return enc(x.item(), depth)  # a numpy scalar
        cls = type(x)
        if not _allowed(cls.__module__) and _class_path(cls) not in TRAVELLING:
            raise CodecError(f"cannot send a {cls.__module__}.{cls.__qualname__} between the grader and the "
                             "sandbox (only plain data, tensors and minimistral's own objects travel)")
        if isinstance(x, nn.Module):
            d = x.__dict__
            for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
                if d.get(hooks):
                    raise CodecError(f"a {cls.__qualname__} with {hooks.strip('_').replace('_', ' ')} cannot travel")
            return {"__nn__": _class_path(cls), "training": x.training,
                    "params": {k: None if v is None else enc(v, depth + 1) for k, v in x._parameters.items()},
                    "buffers": {k: None if v is None else enc(v, depth + 1) for k, v in x._buffers.items()},
                    "nonpersistent": sorted(x._non_persistent_buffers_set),
                    "modules": {k: None if v is None else enc(v, depth + 1) for k, v in x._modules.items()},
                    "attrs": {k: enc(v, depth + 1) for k, v in d.items() if k not in _nn_internal()}}
        if not hasattr(x, "__dict__"):
            raise CodecError(f"cannot send a {cls.__qualname__} (no __dict__)")
        return {"__obj__": _class_path(cls), "dict": {k: enc(v, depth + 1) for k, v in vars(x).items()}}

    header = json.dumps(enc(obj), allow_nan=False).encode()
    from safetensors.torch import save
    blob = save(tensors) if tensors else b""
    return struct.pack(">I", len(header)) + header + blob


def decode(data: bytes):
    if len(data) < 4:
        raise CodecError("a message shorter than its header")
    (n,) = struct.unpack(">I", data[:4])
    try:
        tree = json.loads(data[4:4 + n])
    except (ValueError, RecursionError) as e:
        raise CodecError(f"an unreadable message ({type(e).__name__})") from None
    blob = data[4 + n:]
    tensors = {}
    if blob:
        from safetensors.torch import load
        try:
            tensors = load(blob)
        except Exception as e:
            raise CodecError(f"unreadable tensors ({type(e).__name__}: {e})") from None

    def dec(x, depth=0):
        if depth > 100:
            raise CodecError("nested more than 100 levels deep")
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, list):
            return [dec(v, depth + 1) for v in x]
        if not isinstance(x, dict) or len(x) == 0:
            raise CodecError("an unexpected value in a message")
        key = next(iter(x))
        if key == "__float__":
            return float(x[key])
        if key == "__tensor__":
            t = tensors[x[key]]
            if x.get("param"):
                return nn.Parameter(t, requires_grad=bool(x.get("grad")))
            return t.requires_grad_(bool(x.get("grad")) and (t.is_floating_point() or t.is_complex()))
        if key == "__tuple__":
            return tuple(dec(v, depth + 1) for v in x[key])
        if key == "__dict__":
            return {_hashable(dec(k, depth + 1)): dec(v, depth + 1) for k, v in x[key]}
        if key == "__bytes__":
            return base64.b64decode(x[key])
        if key == "__dtype__":
            dt = getattr(torch, str(x[key]), None)
            if not isinstance(dt, torch.dtype):
                raise CodecError(f"unknown dtype {x[key]!r}")
            return dt
        if key == "__device__":
            return torch.device(str(x[key]))
        if key == "__generator__":
            g = torch.Generator()
            g.set_state(tensors[x[key]])
            return g
        if key == "__ndarray__":
            return tensors[x[key]].numpy()
        if key == "__nn__":
            cls = _load_class(x[key])
            if not issubclass(cls, nn.Module):
                raise CodecError(f"{x[key]} is not a module")
            m = cls.__new__(cls)
            nn.Module.__init__(m)
            m.training = bool(x["training"])
            for k, v in x["attrs"].items():
                object.__setattr__(m, str(k), dec(v, depth + 1))
            for k, v in x["params"].items():
                m.register_parameter(str(k), None if v is None else dec(v, depth + 1))
            nonpersistent = set(x.get("nonpersistent", []))
            for k, v in x["buffers"].items():
                m.register_buffer(str(k), None if v is None else dec(v, depth + 1), persistent=k not in nonpersistent)
            for k, v in x["modules"].items():
                sub = None if v is None else dec(v, depth + 1)
                if sub is not None and not isinstance(sub, nn.Module):
                    raise CodecError("a submodule that is not a module")
                m._modules[str(k)] = sub
            return m
        if key == "__obj__":
            cls = _load_class(x[key])
            if issubclass(cls, nn.Module):
                raise CodecError("a module sent as a plain object")
            o = cls.__new__(cls)
            for k, v in x["dict"].items():
                object.__setattr__(o, str(k), dec(v, depth + 1))
            return o
        raise CodecError(f"an unknown kind of value {key!r}")

    try:
        return dec(tree)
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, ImportError, RecursionError) as e:
        raise CodecError(f"a malformed message ({type(e).__name__}: {str(e)[:100]})") from None


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


# Framing on a stream socket: 8-byte length, then the message.

def send(sock, data: bytes):
    sock.sendall(struct.pack(">Q", len(data)) + data)


def recv(sock, limit: int = MAX_MESSAGE) -> bytes:
    head = _exactly(sock, 8)
    (n,) = struct.unpack(">Q", head)
    if n > limit:
        raise CodecError(f"a message of {n:,} bytes (the limit is {limit:,})")
    return _exactly(sock, n)


def _exactly(sock, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
