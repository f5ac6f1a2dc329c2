"""Writes a `docker save`-style archive of a FROM-scratch image holding one static `pause` binary to stdout.

Usage: pause-image.py PAUSE_BINARY IMAGE_REF | ctr -a SOCKET -n k8s.io images import -

No registry can be reached and the cluster must not depend on the Docker engine, so the pod sandbox image is
assembled here, byte for byte reproducible (fixed mtimes and owners), from the binary the build cached.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile


def tar_member(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    archive.addfile(info, io.BytesIO(data))


def main(pause_binary: str, image_ref: str) -> None:
    with open(pause_binary, "rb") as source:
        pause = source.read()
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.USTAR_FORMAT) as layer_tar:
        tar_member(layer_tar, "pause", pause, mode=0o755)
    layer = layer_buffer.getvalue()
    layer_digest = hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [image_ref], "Layers": [f"{layer_digest}/layer.tar"]}]
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.USTAR_FORMAT) as out:
        tar_member(out, f"{layer_digest}/layer.tar", layer)
        tar_member(out, config_name, config)
        tar_member(out, "manifest.json", json.dumps(manifest).encode())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
