import sys
from pathlib import Path

# The service's modules (main.py) import as they do under uvicorn.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
