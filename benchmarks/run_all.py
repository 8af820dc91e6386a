"""Run every benchmark in this folder and print its measurements."""

import importlib.util
import sys
from pathlib import Path

here = Path(__file__).parent
for path in sorted(here.glob("bench_*.py")):
    print(f"== {path.stem}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    module.main()
