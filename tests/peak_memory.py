"""Code a child process runs to report its own peak resident memory, shared by the peak-memory tests
and the benchmarks.

The process writes its high-water mark (VmHWM, in KiB) to $HWM_FILE at exit. VmHWM is per address space,
so it starts afresh at exec; getrusage's ru_maxrss would carry the forking parent's peak over exec (under
pytest, the test process's own).
"""

HWM = """
import atexit, os, sys
def _hwm():
    with open('/proc/self/status') as status, open(os.environ['HWM_FILE'], 'w') as out:
        out.write(next(line.split()[1] for line in status if line.startswith('VmHWM')))
atexit.register(_hwm)
"""
RUN_ZPRUNE = HWM + "import runpy; sys.argv = ['zprune', *sys.argv[1:]]; runpy.run_module('zprune_cli', run_name='__main__')"
