"""Tiny WebAssembly modules (text format) the sandbox tests run."""

ANSWER = '(module (func (export "run") (result i64) i64.const 42))'
TRAP = '(module (func (export "run") unreachable))'
LOOP = '(module (func (export "run") (loop (br 0))))'
BOMB = """(module (memory 1) (func (export "run")
  (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))"""

COUNT = """(module (func (export "run") (result i64) (local $i i64)
  (loop (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br_if 0 (i64.lt_u (local.get $i) (i64.const 200000000))))
  (local.get $i)))"""
MULTI_MEMORY_BOMB = '(module (memory 80) (memory 80) (func (export "run")))'

CALL = "SELECT dj._sandbox_call(convert_to(%s, 'UTF8'))"
