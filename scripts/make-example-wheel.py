#!/usr/bin/env python3
"""Rebuilds examples/pyhello/wheelhouse/greeting-1.0-py3-none-any.whl.

A one-module package of our own, so the pyhello example installs its
requirements offline (pip --no-index --find-links wheelhouse) and owes
nothing to a package index.
"""
import base64
import hashlib
import pathlib
import zipfile

out = pathlib.Path(__file__).resolve().parent.parent / "examples/pyhello/wheelhouse/greeting-1.0-py3-none-any.whl"
files = {
    "greeting/__init__.py": b'def hello():\n    return "hello from a wheel"\n',
    "greeting-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: greeting\nVersion: 1.0\nSummary: deployer example dependency\n",
    "greeting-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: deployer-example\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
record.append("greeting-1.0.dist-info/RECORD,,")
files["greeting-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in files.items():
        z.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
print(out)
