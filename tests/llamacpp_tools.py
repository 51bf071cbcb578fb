"""llama.cpp's own converter script, for the tests: taken from llama-cpp-python's source distribution, which vendors
llama.cpp (its installed package ships only the library). The tarball of the installed version is fetched once from
PyPI's simple index into the cache (~76 MB; RSPARSE_LLAMACPP_SDIST names a local copy instead), and only the
converter, its `conversion` package and gguf-py are extracted. No model is downloaded: the script converts a local
HF checkpoint.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

INDEX = "https://pypi.org/simple/llama-cpp-python/"


def _cache() -> Path:
    return Path(os.environ.get("RSPARSE_CACHE", Path.home() / ".cache" / "rsparse_cpp"))


def sdist(version: str) -> Path:
    """The source distribution of llama-cpp-python `version`, downloaded once (OSError when it cannot be)."""
    override = os.environ.get("RSPARSE_LLAMACPP_SDIST")
    if override:
        return Path(override)
    name = f"llama_cpp_python-{version}.tar.gz"
    path = _cache() / "downloads" / name
    if path.is_file():
        return path
    page = urllib.request.urlopen(INDEX, timeout=30).read().decode()
    m = re.search(r'href="(https://[^"#]*/' + re.escape(name) + r')#sha256=([0-9a-f]{64})"', page)
    if not m:
        raise OSError(f"{name} is not listed on {INDEX}")
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    with urllib.request.urlopen(m.group(1), timeout=60) as r, open(part, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
    if hashlib.sha256(part.read_bytes()).hexdigest() != m.group(2):
        part.unlink()
        raise OSError(f"{name}: sha256 does not match the index")
    part.replace(path)  # whole or absent
    return path


def converter(version: str, dest: Path) -> Path:
    """llama.cpp's folder with convert_hf_to_gguf.py, conversion/ and gguf-py/, extracted under dest."""
    root = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = (root + "convert_hf_to_gguf.py", root + "conversion/", root + "gguf-py/gguf/")
    with tarfile.open(sdist(version)) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(wanted)]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12: refuse links and paths out of dest
            tar.extractall(dest, members=members, filter="data")
        else:  # the members are regular files under the names above, from a tarball checked against its sha256
            tar.extractall(dest, members=members)
    return dest / root


def convert(llamacpp: Path, hf_dir: Path, out: Path, outtype: str = "f32") -> Path:
    """Run llama.cpp's converter on hf_dir with its own gguf-py (not the installed one)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(llamacpp / "gguf-py"), str(llamacpp)]))
    subprocess.run([sys.executable, str(llamacpp / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype,
                    "--outfile", str(out)], env=env, check=True, capture_output=True)
    return out


def chat_template(version: str, name: str) -> str:
    """A model's chat template as llama.cpp's tests keep it (models/templates/<name>.jinja in the vendored tree):
    the real templates of real checkpoints, without downloading the checkpoints."""
    member = f"llama_cpp_python-{version}/vendor/llama.cpp/models/templates/{name}.jinja"
    with tarfile.open(sdist(version)) as tar:
        f = tar.extractfile(member)
        if f is None:
            raise OSError(f"{member}: not in the source distribution")
        return f.read().decode("utf-8")


def reference_llama(path, **kwargs):
    """llama_cpp.Llama(path, **kwargs, verbose=False) on llama.cpp's plain CPU buffers, without its extra buffer
    types (weight repacking and, on Intel CPUs with AMX, the AMX buffer). Built on a Sapphire Rapids machine,
    llama.cpp's AMX matmul crashes the process (SIGSEGV in ggml_backend_amx_mul_mat) on the tiny test models'
    shapes; the plain path computes the same products and is what the tests compare with. bench/decode.py keeps
    llama.cpp's defaults: there it is the runtime users get."""
    import llama_cpp
    from unittest import mock

    lib = llama_cpp.llama_cpp
    default = lib.llama_model_default_params

    def plain():
        params = default()
        params.use_extra_bufts = False
        return params

    with mock.patch.object(lib, "llama_model_default_params", plain):
        return llama_cpp.Llama(str(path), verbose=False, **kwargs)
