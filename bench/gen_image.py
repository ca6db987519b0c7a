#!/usr/bin/env python3
"""Deterministic OCI image layouts for the cvmd benchmark (stdlib only).

    gen_image.py NAME OUT_DIR        # writes an OCI layout with tag "latest"
    gen_image.py --list              # names of the images it knows
    gen_image.py --chain-id OUT_DIR  # chain ID of the top layer (OCI image spec)

Content comes from a seeded PRNG, so the same NAME gives the same bytes (and
digests) on every run and every machine with the same Python zlib. Layers are
gzip level 6 (what docker uses), tars are PAX with fixed mtime/owner.

Two kinds of file make up a layer:
  * text-like: slices of a seeded "word salad" corpus, compress ~3-4x;
  * binary-like: PRNG bytes squeezed onto 16 symbols (4 bits of entropy per
    byte), compress ~2x and leave deflate's match finder little to find.
Later layers also replace a few files and delete some (whiteouts), as real
images do.
"""

import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor

GEN_VERSION = 1
MTIME = 1700000000
KB = 1024
MB = 1024 * 1024

# Per image: list of layers, each (text files, mean text size, binary files, mean binary size).
IMAGES = {
    # ~4 MB, ~300 files
    "small": [(260, 4 * KB, 20, 150 * KB)],
    # ~250 MB, ~4.5k files
    "medium": [
        (2000, 8 * KB, 50, 2 * MB),
        (1500, 8 * KB, 40, int(1.7 * MB)),
        (1000, 6 * KB, 22, 2 * MB),
    ],
    # ~900 MB, ~40k files
    "big": [(7900, 10 * KB, 100, 1 * MB)] * 5,
    # one 100 MB file (and one small one): bench/lazy.sh reads it lazily
    "onefile": [(1, 1 * KB, 1, 100 * MB)],
}

WORDS_SEED = 4242
CORPUS_SIZE = 4 * MB


def _corpus():
    rnd = random.Random(WORDS_SEED)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rnd.choices(letters, k=rnd.randint(2, 10))) for _ in range(5000)]
    words += ["the", "of", "and", "to", "in", "is", "for", "return", "if", "else",
              "#include", "static", "int", "void", "{", "}", ";", "=", "==", "0", "1"]
    out, size = [], 0
    while size < CORPUS_SIZE:
        line = " ".join(rnd.choices(words, k=rnd.randint(3, 14))) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()


# 256 -> 16 symbols: 4 bits of entropy per byte, gzip gets ~2x.
_SQUEEZE = bytes((b & 0x0F) * 17 for b in range(256))


def _size(rnd, mean):
    # Between 0.1x and ~3x the mean, skewed small (like real trees).
    return max(1, int(mean * rnd.expovariate(1.0) * 0.9 + mean * 0.1))


def _dirs(rnd, layer, n):
    tops = ["usr/lib", "usr/share", "usr/bin", "opt/app", "etc", "var/lib"]
    return [f"{rnd.choice(tops)}/pkg{layer}_{i:03d}/{rnd.choice(['src', 'data', 'lib', 'doc'])}"
            for i in range(n)]


class _HashingSink(io.RawIOBase):
    """File-like: hashes what is written, passes it on."""

    def __init__(self, out):
        self.out, self.h, self.n = out, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, b):
        self.h.update(b)
        self.out.write(b)
        self.n += len(b)
        return len(b)


def _layer(args):
    """Writes one gzip layer blob; returns (digest, size, diff_id, uncompressed, files)."""
    name, idx, spec, blobs, prev_files = args
    n_text, text_mean, n_bin, bin_mean = spec
    rnd = random.Random(f"{name}/{idx}/{GEN_VERSION}")
    corpus = _corpus()
    tmp = os.path.join(blobs, f".tmp-{name}-{idx}")
    files_out = []
    with open(tmp, "wb") as raw:
        zsink = _HashingSink(raw)
        with gzip.GzipFile(fileobj=zsink, mode="wb", compresslevel=6, mtime=0) as gz:
            tsink = _HashingSink(gz)
            with tarfile.open(fileobj=tsink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                made = set()

                def add_dir(path):
                    parts = path.split("/")
                    for i in range(1, len(parts) + 1):
                        d = "/".join(parts[:i])
                        if d not in made:
                            made.add(d)
                            ti = tarfile.TarInfo(d)
                            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
                            ti.uname = ti.gname = "root"
                            tar.addfile(ti)

                def add_file(path, data, mode):
                    add_dir(os.path.dirname(path))
                    ti = tarfile.TarInfo(path)
                    ti.size, ti.mode, ti.mtime = len(data), mode, MTIME
                    ti.uname = ti.gname = "root"
                    tar.addfile(ti, io.BytesIO(data))
                    files_out.append(path)

                dirs = _dirs(rnd, idx, max(1, (n_text + n_bin) // 40))
                # Upper layers rewrite and delete a few files of the layers below.
                if prev_files:
                    picks = rnd.sample(prev_files, min(len(prev_files), 40))
                    for p in picks[:20]:
                        add_file(p, corpus[:rnd.randint(100, 4000)], 0o644)
                    for p in picks[20:]:
                        d, b = os.path.split(p)
                        add_dir(d)
                        ti = tarfile.TarInfo(f"{d}/.wh.{b}")
                        ti.mtime, ti.mode = MTIME, 0o644
                        tar.addfile(ti)
                for i in range(n_text):
                    n = _size(rnd, text_mean)
                    off = rnd.randrange(0, len(corpus) - n) if n < len(corpus) else 0
                    data = f"# {name} layer {idx} file {i}\n".encode() + corpus[off:off + n]
                    ext = rnd.choice([".py", ".h", ".c", ".txt", ".json", ".conf", ".md"])
                    add_file(f"{rnd.choice(dirs)}/f{i:05d}{ext}", data, 0o644)
                for i in range(n_bin):
                    # onefile's one file is exactly its size (bench/lazy.sh).
                    size = bin_mean if name == "onefile" else _size(rnd, bin_mean)
                    data = rnd.randbytes(size).translate(_SQUEEZE)
                    add_file(f"{rnd.choice(dirs)}/bin{i:04d}.so", data, 0o755)
                for i in range(5):
                    ti = tarfile.TarInfo(f"{dirs[0]}/link{i}")
                    ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, f"f{i:05d}.txt", MTIME
                    ti.mode, ti.uname, ti.gname = 0o777, "root", "root"
                    tar.addfile(ti)
    digest = zsink.h.hexdigest()
    os.replace(tmp, os.path.join(blobs, digest))
    return ("sha256:" + digest, zsink.n, "sha256:" + tsink.h.hexdigest(), tsink.n, files_out)


def _write_blob(blobs, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)


def generate(name, out):
    layers = IMAGES[name]
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    # Layer i's whiteouts need the file list of the layers below; only the
    # name list matters, so compute layer 0 first and reuse its names (every
    # layer draws its own names from its own seed, so this is cheap and stable).
    first = _layer((name, 0, layers[0], blobs, None))
    results = [first]
    if len(layers) > 1:
        jobs = [(name, i, layers[i], blobs, first[4]) for i in range(1, len(layers))]
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
            results += list(ex.map(_layer, jobs))
    config = {
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [r[2] for r in results]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"cvmd bench {name} layer {i}"}
                    for i in range(len(results))],
    }
    cdig, csize = _write_blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": r[0], "size": r[1]}
                   for r in results],
    }
    mdig, msize = _write_blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig, "size": msize,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    stats = {
        "name": name, "manifest": mdig, "layers": len(results),
        "compressed_bytes": sum(r[1] for r in results),
        "uncompressed_bytes": sum(r[3] for r in results),
        "files": sum(len(r[4]) for r in results),
        "chain_id": chain_id([r[2] for r in results]),
    }
    with open(os.path.join(out, "bench-stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    return stats


def chain_id(diff_ids):
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chain = diff_ids[0]
    for d in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    return chain


def stats_of(layout):
    """bench-stats.json for an OCI layout made elsewhere (images/build.sh),
    with its only manifest; reads each layer once to count its files."""
    blob = lambda d: os.path.join(layout, "blobs", "sha256", d.split(":")[1])
    with open(os.path.join(layout, "index.json")) as f:
        mdig = json.load(f)["manifests"][0]["digest"]
    with open(blob(mdig)) as f:
        manifest = json.load(f)
    with open(blob(manifest["config"]["digest"])) as f:
        diff_ids = json.load(f)["rootfs"]["diff_ids"]
    files = uncompressed = 0
    for layer in manifest["layers"]:
        with tarfile.open(blob(layer["digest"]), "r:*") as t:
            for m in t:
                files += 1
                uncompressed += m.size
    stats = {
        "name": os.path.basename(layout.rstrip("/")), "manifest": mdig, "layers": len(manifest["layers"]),
        "compressed_bytes": sum(l["size"] for l in manifest["layers"]),
        "uncompressed_bytes": uncompressed, "files": files, "chain_id": chain_id(diff_ids),
    }
    with open(os.path.join(layout, "bench-stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    return stats


def stamp(name):
    """Changes whenever this generator or the image's spec changes."""
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read() + repr(IMAGES[name]).encode()).hexdigest()[:16]


if __name__ == "__main__":
    if sys.argv[1:] == ["--list"]:
        print(" ".join(IMAGES))
    elif len(sys.argv) == 3 and sys.argv[1] == "--stamp":
        print(stamp(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--chain-id":
        with open(os.path.join(sys.argv[2], "bench-stats.json")) as f:
            print(json.load(f)["chain_id"])
    elif len(sys.argv) == 3 and sys.argv[1] == "--stats-of":
        print(json.dumps(stats_of(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] in IMAGES:
        print(json.dumps(generate(sys.argv[1], sys.argv[2])))
    else:
        sys.exit(__doc__)
