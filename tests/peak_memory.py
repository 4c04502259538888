"""Code a child process runs to report its own peak resident memory (or the modules it imported), shared by
the tests and the benchmarks.

The process writes its high-water mark (VmHWM, in KiB) to $HWM_FILE at exit. VmHWM is per address space,
so it starts afresh at exec; getrusage's ru_maxrss would carry the forking parent's peak over exec (under
pytest, the test process's own).
"""

HWM = """
import atexit, os, sys
def _hwm():
    with open('/proc/self/status') as status, open(os.environ['HWM_FILE'], 'w') as out:
        out.write(next(line.split()[1] for line in status if line.startswith('VmHWM')))
    # How many pages of the shared libraries a process maps depends on the page cache, not on the run: right
    # after pip wrote them (a fresh install, as in CI) it maps 58-110 MiB more than once they were read back
    # from disk. Their resident size at exit (libraries stay mapped) lets a test leave them out.
    with open('/proc/self/smaps') as smaps, open(os.environ['HWM_FILE'] + '.libs', 'w') as out:
        library, kib = False, 0
        for line in smaps:
            head = line.split()
            if head and '-' in head[0] and not head[0].endswith(':'):
                library = len(head) > 5 and '.so' in os.path.basename(head[5])
            elif library and head[0] == 'Rss:':
                kib += int(head[1])
        out.write(str(kib))
atexit.register(_hwm)
"""
RUN_ZPRUNE = HWM + "import runpy; sys.argv = ['zprune', *sys.argv[1:]]; runpy.run_module('zprune_cli', run_name='__main__')"

# The names of the modules a `zprune` process imported, as JSON in $MODULES_FILE at exit. (`python -X importtime`
# misses a package imported through importlib, as base/lazy.py imports torch.)
MODULES = """
import atexit, json, os, sys
atexit.register(lambda: open(os.environ['MODULES_FILE'], 'w').write(json.dumps(sorted(sys.modules))))
"""
RUN_ZPRUNE_MODULES = MODULES + "import runpy; sys.argv = ['zprune', *sys.argv[1:]]; runpy.run_module('zprune_cli', run_name='__main__')"
