"""Process running shared by the benchmark scripts (Python standard library only)."""

import os
import subprocess
import tempfile
import time


def run_measured(cmd, env=None, timeout=None):
    """Runs cmd to completion (killed after `timeout` seconds, if given); returns
    (returncode, stdout, stderr, peak RSS in KiB, seconds). The peak RSS is wait4's ru_maxrss,
    which Popen.wait does not expose."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = None if timeout is None else time.time() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline and time.time() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        o, e = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return p.returncode, o, e, ru.ru_maxrss, time.perf_counter() - t0


def compile_and_run(source, flags, run_args, work_dir, timeout=600):
    """Compiles the C file `source` with gcc `flags` into `work_dir` and runs it with `run_args`
    (the probes bandwidth.c and fma_peak.c); returns (ok, its output or gcc's error)."""
    exe = os.path.join(work_dir, os.path.splitext(os.path.basename(source))[0])
    c = subprocess.run(["gcc", *flags, source, "-o", exe], capture_output=True, text=True)
    if c.returncode != 0:
        return False, f"could not compile {os.path.basename(source)}: {c.stderr.strip()[:300]}"
    r = subprocess.run([exe, *run_args], capture_output=True, text=True, timeout=timeout)
    return True, r.stdout.strip() or r.stderr.strip()
