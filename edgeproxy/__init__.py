__version__ = "0.1.0"

# First of all: decides whether the compiled modules or their .py sources load (see build.py).
from edgeproxy import build as build
