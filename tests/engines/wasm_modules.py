"""The WASI test modules of the wasm engine tests, in WebAssembly text (WAT).

Each function returns the text of one module; `compile_wat` turns it into a .wasm file. The
modules share `_PRELUDE`: the WASI imports and small helpers (print, strlen, find a preopened
folder by its name, open a file, print a number). Conventions the helpers rely on:

- memory page 0 is laid out by hand: 0-63 scratch for WASI calls, 64-511 preopen names,
  512-1023 poll_oneoff records, a clock reading (616) and a number buffer (980-1000),
  1024-2047 the module's strings, 2048-4095 argv/environ pointers, 4096-16383 their text,
  16384-65535 a file buffer;
- wasmtime's `fd_write` writes only the first iovec, so every write uses one iovec;
- a failing WASI call ends the module with `proc_exit(errno)`, so tests can assert the errno.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

import wasmtime

__all__ = [
    "ERRNO_PERM",
    "SLEEP_CLOCKS",
    "SleepClock",
    "busy_loop",
    "compile_wat",
    "echo_args",
    "exit_code",
    "grow_memory_until_refused",
    "hello",
    "import_answer",
    "large_initial_memory",
    "library_answer",
    "poll_stdout_writable",
    "print_env",
    "sleep_then_print",
    "trap_unreachable",
    "upper_case_input_to_output",
    "write_file",
]

# WASI errno `perm`: what wasmtime answers to a write below a read-only preopen.
ERRNO_PERM: Final = 63
# path_open oflags and rights.
_O_CREAT: Final = 1
_O_TRUNC: Final = 8
_RIGHT_FD_READ: Final = 1 << 1
_RIGHT_FD_WRITE: Final = 1 << 6
# proc_exit code of `$find_preopen` when the folder is not preopened.
PREOPEN_MISSING: Final = 100

_PRELUDE: Final = """
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name"
    (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)

  (func $write_all (param $fd i32) (param $ptr i32) (param $len i32)
    (local $errno i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (local.set $errno
          (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (i32.const 8))))
        (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
        (br $more))))

  (func $print (param $ptr i32) (param $len i32)
    (call $write_all (i32.const 1) (local.get $ptr) (local.get $len)))

  (func $newline
    (i32.store8 (i32.const 1000) (i32.const 10))
    (call $print (i32.const 1000) (i32.const 1)))

  (func $strlen (param $ptr i32) (result i32) (local $end i32)
    (local.set $end (local.get $ptr))
    (loop $next
      (if (i32.load8_u (local.get $end))
        (then (local.set $end (i32.add (local.get $end) (i32.const 1))) (br $next))))
    (i32.sub (local.get $end) (local.get $ptr)))

  (func $streq (param $a i32) (param $b i32) (param $len i32) (result i32)
    (block $differ
      (loop $next
        (if (i32.eqz (local.get $len)) (then (return (i32.const 1))))
        (br_if $differ
          (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $len (i32.sub (local.get $len) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; The fd of the preopened folder named exactly $name (e.g. "/inputs").
  (func $find_preopen (param $name i32) (param $len i32) (result i32) (local $fd i32)
    (local.set $fd (i32.const 3))
    (block $none
      (loop $next
        (br_if $none (call $fd_prestat_get (local.get $fd) (i32.const 64)))
        (if (i32.eq (i32.load (i32.const 68)) (local.get $len))
          (then
            (drop (call $fd_prestat_dir_name
              (local.get $fd) (i32.const 128) (local.get $len)))
            (if (call $streq (i32.const 128) (local.get $name) (local.get $len))
              (then (return (local.get $fd))))))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br $next)))
    (call $proc_exit (i32.const PREOPEN_MISSING))
    (unreachable))

  (func $open (param $dir i32) (param $path i32) (param $len i32) (param $oflags i32)
    (param $rights i64) (result i32) (local $errno i32)
    (local.set $errno (call $path_open (local.get $dir) (i32.const 0) (local.get $path)
      (local.get $len) (local.get $oflags) (local.get $rights) (i64.const 0) (i32.const 0)
      (i32.const 16)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (i32.load (i32.const 16)))

  ;; Loads argv; returns argc. Argument i is at (i32.load (2048 + 4 i)).
  (func $load_args (result i32) (local $errno i32)
    (local.set $errno (call $args_sizes_get (i32.const 32) (i32.const 36)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (local.set $errno (call $args_get (i32.const 2048) (i32.const 4096)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (i32.load (i32.const 32)))

  (func $arg (param $index i32) (result i32)
    (i32.load (i32.add (i32.const 2048) (i32.mul (local.get $index) (i32.const 4)))))

  ;; Prints $n in decimal (digits built backwards in 980-999).
  (func $print_u32 (param $n i32) (local $at i32)
    (local.set $at (i32.const 1000))
    (loop $digit
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at)
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $n)))
    (call $print (local.get $at) (i32.sub (i32.const 1000) (local.get $at))))
""".replace("PREOPEN_MISSING", str(PREOPEN_MISSING))


def _module(body: str, strings: dict[int, str] | None = None) -> str:
    """A module: the prelude, the module's strings (address → WAT string text), `body`."""
    data = "\n".join(
        f'  (data (i32.const {address}) "{text}")' for address, text in (strings or {}).items()
    )
    return f"(module\n{_PRELUDE}\n{data}\n{body}\n)\n"


def compile_wat(folder: Path, name: str, wat: str) -> Path:
    """`folder/name.wasm`, compiled from `wat`."""
    path = folder / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def hello(text: str = "hello, world") -> str:
    """Prints `text` and a newline, and returns (exit code 0)."""
    return _module(
        f"""
  (func (export "_start")
    (call $print (i32.const 1024) (i32.const {len(text.encode())}))
    (call $newline))""",
        {1024: text},
    )


def echo_args(*, first: int = 1) -> str:
    """Prints argv[first:] separated by spaces, and a newline."""
    return _module(
        f"""
  (func (export "_start") (local $argc i32) (local $index i32) (local $text i32)
    (local.set $argc (call $load_args))
    (local.set $index (i32.const {first}))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $index) (local.get $argc)))
        (if (i32.gt_u (local.get $index) (i32.const {first}))
          (then (call $print (i32.const 1024) (i32.const 1))))
        (local.set $text (call $arg (local.get $index)))
        (call $print (local.get $text) (call $strlen (local.get $text)))
        (local.set $index (i32.add (local.get $index) (i32.const 1)))
        (br $next)))
    (call $newline))""",
        {1024: " "},
    )


def upper_case_input_to_output() -> str:
    """Reads /inputs/in.txt and writes it upper-cased (ASCII) to /outputs/out.txt."""
    return _module(
        f"""
  (func (export "_start") (local $in i32) (local $out i32) (local $size i32) (local $at i32)
    (local $byte i32) (local $errno i32)
    (local.set $in (call $open (call $find_preopen (i32.const 1024) (i32.const 7))
      (i32.const 1040) (i32.const 6) (i32.const 0) (i64.const {_RIGHT_FD_READ})))
    ;; read everything (up to 48 KiB) into the buffer at 16384
    (block $eof
      (loop $more
        (i32.store (i32.const 0) (i32.add (i32.const 16384) (local.get $size)))
        (i32.store (i32.const 4) (i32.sub (i32.const 49152) (local.get $size)))
        (local.set $errno
          (call $fd_read (local.get $in) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
        (br_if $eof (i32.eqz (i32.load (i32.const 8))))
        (local.set $size (i32.add (local.get $size) (i32.load (i32.const 8))))
        (br $more)))
    (loop $next
      (if (i32.lt_u (local.get $at) (local.get $size))
        (then
          (local.set $byte (i32.load8_u (i32.add (i32.const 16384) (local.get $at))))
          (if (i32.and (i32.ge_u (local.get $byte) (i32.const 97))
                       (i32.le_u (local.get $byte) (i32.const 122)))
            (then (i32.store8 (i32.add (i32.const 16384) (local.get $at))
                    (i32.sub (local.get $byte) (i32.const 32)))))
          (local.set $at (i32.add (local.get $at) (i32.const 1)))
          (br $next))))
    (local.set $out (call $open (call $find_preopen (i32.const 1056) (i32.const 8))
      (i32.const 1072) (i32.const 7) (i32.const {_O_CREAT | _O_TRUNC})
      (i64.const {_RIGHT_FD_WRITE})))
    (call $write_all (local.get $out) (i32.const 16384) (local.get $size))
    (drop (call $fd_close (local.get $out))))""",
        {1024: "/inputs", 1040: "in.txt", 1056: "/outputs", 1072: "out.txt"},
    )


def write_file(*, folder: str = "/inputs", text: str = "overwritten") -> str:
    """Creates or truncates argv[1] in the preopened `folder` and writes `text` and a
    newline to it; a refused open ends the module with exit code errno."""
    content = text + "\\0a"
    return _module(
        f"""
  (func (export "_start") (local $file i32) (local $name i32)
    (drop (call $load_args))
    (local.set $name (call $arg (i32.const 1)))
    (local.set $file (call $open (call $find_preopen (i32.const 1024) (i32.const {len(folder)}))
      (local.get $name) (call $strlen (local.get $name)) (i32.const {_O_CREAT | _O_TRUNC})
      (i64.const {_RIGHT_FD_WRITE})))
    (call $write_all (local.get $file) (i32.const 1280) (i32.const {len(text) + 1}))
    (drop (call $fd_close (local.get $file))))""",
        {1024: folder, 1280: content},
    )


def exit_code(code: int) -> str:
    """Prints "exiting" and calls proc_exit(code)."""
    return _module(
        f"""
  (func (export "_start")
    (call $print (i32.const 1024) (i32.const 7))
    (call $newline)
    (call $proc_exit (i32.const {code})))""",
        {1024: "exiting"},
    )


def print_env(name: str) -> str:
    """Prints the value of the environment variable `name` and a newline; exit code 1 when
    it is not set."""
    prefix = f"{name}="
    return _module(
        f"""
  (func (export "_start") (local $count i32) (local $index i32) (local $entry i32)
    (local $errno i32)
    (local.set $errno (call $environ_sizes_get (i32.const 32) (i32.const 36)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (local.set $errno (call $environ_get (i32.const 2048) (i32.const 4096)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (local.set $count (i32.load (i32.const 32)))
    (block $missing
      (loop $next
        (br_if $missing (i32.ge_u (local.get $index) (local.get $count)))
        (local.set $entry (call $arg (local.get $index)))
        (if (call $streq (local.get $entry) (i32.const 1024) (i32.const {len(prefix)}))
          (then
            (local.set $entry (i32.add (local.get $entry) (i32.const {len(prefix)})))
            (call $print (local.get $entry) (call $strlen (local.get $entry)))
            (call $newline)
            (return)))
        (local.set $index (i32.add (local.get $index) (i32.const 1)))
        (br $next)))
    (call $proc_exit (i32.const 1)))""",
        {1024: prefix},
    )


def busy_loop() -> str:
    """Spins forever without calling the host: only an epoch interruption stops it."""
    return _module('  (func (export "_start") (loop $spin (br $spin)))')


SleepClock = Literal["relative monotonic", "absolute monotonic", "absolute realtime"]
SLEEP_CLOCKS: Final[tuple[SleepClock, ...]] = (
    "relative monotonic",  # C's sleep and nanosleep, Rust's thread::sleep
    "absolute monotonic",  # CPython's time.sleep (clock_nanosleep with TIMER_ABSTIME)
    "absolute realtime",
)


def sleep_then_print(sleep_s: float, clock: SleepClock = "relative monotonic") -> str:
    """Prints "sleeping", sleeps `sleep_s` with WASI poll_oneoff (one clock subscription;
    an absolute one is computed from clock_time_get), checks the event it got back, prints
    "awake". Exit code 5 if poll_oneoff reported anything but that one clock event."""
    absolute = clock.startswith("absolute")
    clock_id = 0 if clock.endswith("realtime") else 1
    now = (
        f"""
    (local.set $errno (call $clock_time_get (i32.const {clock_id}) (i64.const 1) (i32.const 616)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (local.set $now (i64.load (i32.const 616)))"""
        if absolute
        else ""
    )
    return _module(
        f"""
  (func (export "_start") (local $errno i32) (local $now i64)
    (call $print (i32.const 1024) (i32.const 8))
    (call $newline){now}
    (i64.store (i32.const 512) (i64.const 77))             ;; userdata
    (i32.store8 (i32.const 520) (i32.const 0))             ;; tag: clock
    (i32.store (i32.const 528) (i32.const {clock_id}))     ;; clock id
    (i64.store (i32.const 536)                             ;; timeout, ns
      (i64.add (local.get $now) (i64.const {int(sleep_s * 1e9)})))
    (i64.store (i32.const 544) (i64.const 0))              ;; precision
    (i32.store16 (i32.const 552) (i32.const {int(absolute)}))  ;; flags: abstime?
    (local.set $errno
      (call $poll_oneoff (i32.const 512) (i32.const 576) (i32.const 1) (i32.const 608)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (if (i32.or
          (i32.or (i32.ne (i32.load (i32.const 608)) (i32.const 1))          ;; one event
                  (i64.ne (i64.load (i32.const 576)) (i64.const 77)))        ;; our userdata
          (i32.or (i32.load16_u (i32.const 584))                             ;; no error
                  (i32.load8_u (i32.const 586))))                            ;; type: clock
      (then (call $proc_exit (i32.const 5))))
    (call $print (i32.const 1040) (i32.const 5))
    (call $newline))""",
        {1024: "sleeping", 1040: "awake"},
    )


def poll_stdout_writable(*, events_at: int = 576) -> str:
    """Polls one fd_write subscription on stdout (fd 1), which wasmtime answers at once;
    exit code 0 if it got that one event, 5 otherwise. An `events_at` that is not a multiple
    of 8 is a guest bug that wasmtime refuses."""
    return _module(
        f"""
  (func (export "_start") (local $errno i32)
    (i64.store (i32.const 512) (i64.const 78))             ;; userdata
    (i32.store8 (i32.const 520) (i32.const 2))             ;; tag: fd_write
    (i32.store (i32.const 528) (i32.const 1))              ;; fd: stdout
    (local.set $errno (call $poll_oneoff
      (i32.const 512) (i32.const {events_at}) (i32.const 1) (i32.const 608)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (if (i32.or
          (i32.or (i32.ne (i32.load (i32.const 608)) (i32.const 1))          ;; one event
                  (i64.ne (i64.load (i32.const 576)) (i64.const 78)))        ;; our userdata
          (i32.or (i32.load16_u (i32.const 584))                             ;; no error
                  (i32.ne (i32.load8_u (i32.const 586)) (i32.const 2))))     ;; type: fd_write
      (then (call $proc_exit (i32.const 5)))))"""
    )


def grow_memory_until_refused(*, then: Literal["exit", "trap"], pages_per_grow: int = 1) -> str:
    """Grows memory `pages_per_grow` pages at a time until memory.grow returns -1, prints the
    number of pages it got, then calls proc_exit(3) (`then="exit"`, as a C program whose
    malloc returned NULL) or traps (`then="trap"`, as an abort)."""
    ending = "(call $proc_exit (i32.const 3))" if then == "exit" else "(unreachable)"
    return _module(
        f"""
  (func (export "_start")
    (block $refused
      (loop $grow
        (br_if $refused
          (i32.eq (memory.grow (i32.const {pages_per_grow})) (i32.const -1)))
        (br $grow)))
    (call $print_u32 (memory.size))
    (call $newline)
    {ending})"""
    )


def large_initial_memory(pages: int) -> str:
    """A module whose memory starts at `pages` pages (and exports a no-op `_start`)."""
    return f'(module (memory (export "memory") {pages}) (func (export "_start")))\n'


def trap_unreachable() -> str:
    """Prints "before the trap", then executes `unreachable`."""
    return _module(
        """
  (func (export "_start")
    (call $print (i32.const 1024) (i32.const 15))
    (call $newline)
    (unreachable))""",
        {1024: "before the trap"},
    )


def library_answer() -> str:
    """An import module: exports `answer` (returns 42); a reactor with `_initialize`, which
    must run first (`answer` returns 0 otherwise)."""
    return """(module
  (global $answer (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $answer (i32.const 42)))
  (func (export "answer") (result i32) (global.get $answer)))
"""


def import_answer(module_name: str) -> str:
    """Calls `answer` imported from `module_name` and exits with what it returned."""
    return f"""(module
  (import "{module_name}" "answer" (func $answer (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (call $answer))))
"""
