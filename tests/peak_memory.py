"""Code a child process runs to report its own peak resident memory, shared by the peak-memory tests
and the benchmarks.

The process writes its high-water mark (VmHWM, in KiB) to $HWM_FILE at exit. VmHWM is per address space,
so it starts afresh at exec; getrusage's ru_maxrss would carry the forking parent's peak over exec (under
pytest, the test process's own).
"""

HWM = """
import atexit, glob, os, sys
# How many pages of torch's libraries a process maps depends on the page cache: right after pip wrote them
# (a fresh install, as in CI) the process maps 58 MiB more than once they were evicted and read back from
# disk (306 vs 248 MiB for the imports). Evicting them first measures every run in the second state.
for _lib in glob.glob(os.path.join(sys.prefix, 'lib', 'python*', 'site-packages', '**', '*.so*'), recursive=True):
    _fd = os.open(_lib, os.O_RDONLY)
    os.posix_fadvise(_fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(_fd)
def _hwm():
    with open('/proc/self/status') as status, open(os.environ['HWM_FILE'], 'w') as out:
        out.write(next(line.split()[1] for line in status if line.startswith('VmHWM')))
atexit.register(_hwm)
"""
RUN_ZPRUNE = HWM + "import runpy; sys.argv = ['zprune', *sys.argv[1:]]; runpy.run_module('zprune_cli', run_name='__main__')"
