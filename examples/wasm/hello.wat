;; A WASI command that prints its first argument (or "hello, meshnode") to stdout.
;; Build: python -c "import wasmtime,sys; sys.stdout.buffer.write(wasmtime.wat2wasm(open('hello.wat').read()))" > hello.wasm
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..8: iovec, 8..16: argc/argv_buf_size, 16..: "hello, meshnode\n", 64..: argv, 256..: argv_buf
  (data (i32.const 16) "hello, meshnode\n")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $strlen (param $ptr i32) (result i32)
    (local $end i32)
    (local.set $end (local.get $ptr))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (local.get $end))))
        (local.set $end (i32.add (local.get $end) (i32.const 1)))
        (br $next)))
    (i32.sub (local.get $end) (local.get $ptr)))
  (func (export "_start")
    (local $arg i32)
    (drop (call $args_sizes_get (i32.const 8) (i32.const 12)))
    (if (i32.lt_u (i32.load (i32.const 8)) (i32.const 2))
      (then (call $write (i32.const 16) (i32.const 16)) (return)))
    (drop (call $args_get (i32.const 64) (i32.const 256)))
    (local.set $arg (i32.load (i32.const 68)))
    (call $write (local.get $arg) (call $strlen (local.get $arg)))
    ;; a newline: reuse the one at the end of the greeting
    (call $write (i32.const 31) (i32.const 1))))
