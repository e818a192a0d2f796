"""The training profiler and advisor: a library any training loop uses.

```python
tracer = StepTracer(run_dir, deep=DeepCaptureConfig())   # deep: optional torch.profiler window
for batch in tracer.loader(instrument_loader(dataloader)):
    with tracer.phase("h2d"): ...
    with tracer.phase("compute"): ...
    with tracer.phase("tail"): ...
    tracer.end_step(samples=len(batch))
tracer.close()                         # run_dir/profile/{steps.jsonl,summary.json,trace.json}
analysis = analyze(run_dir / "profile")
write_report(run_dir / "profile")      # report.html (self-contained) + report.json
```
See docs/profile.md.
"""

from .advisor import Advice, Analysis, analyze
from .deep import DeepCaptureConfig
from .pipeline import instrument_loader, stage
from .report import write_report
from .trace import StepTracer

__all__ = ["Advice", "Analysis", "DeepCaptureConfig", "StepTracer", "analyze",
           "instrument_loader", "stage", "write_report"]
