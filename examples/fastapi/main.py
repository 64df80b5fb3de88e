"""fastapi-hello: the example FastAPI service.

No start command in service.toml: deployer sees `app` defined here and
starts it with uvicorn, in the release's virtualenv.
"""
import os
from pathlib import Path

from fastapi import FastAPI

VERSION = (Path(__file__).parent / "VERSION").read_text().strip()

app = FastAPI(title="fastapi-hello")


@app.get("/health")
def health():
    return {"status": "healthy", "version": VERSION}


@app.get("/version")
def version():
    return VERSION


@app.get("/env/{name}")
def env(name: str):
    return os.environ.get(name, "")
