"""Benchmarks of the layers, drop-ins, loss and models against their plain-PyTorch / cuDNN baselines, in one
process, same threads. Split by concern:

* :mod:`.timing`: timing, peak memory, GEMM/FMA rates, the machine's description;
* :mod:`.workloads`: shapes, layers and baselines, FLOP counts, the runs that produce rows;
* :mod:`.reporting`: tables, CSV/JSON, the speed-up chart;
* :mod:`.cudnn`: which cuDNN RNN algorithm the GPU baseline asked for and ran, time per recurrent step.

Run: ``python -m brnnseg_kernels bench --device cpu`` (see ``--help``). Everything is re-exported here
(``bench.time_ms``, ``bench.run``, ``bench.report``, ...)."""
from .timing import *  # noqa: F401,F403
from .timing import _sync  # noqa: F401
from .workloads import *  # noqa: F401,F403
from .cudnn import baseline_record, observed_algorithm, per_step_us, predicted_algorithm  # noqa: F401
from .workloads import _SeqModel  # noqa: F401
from .reporting import *  # noqa: F401,F403
