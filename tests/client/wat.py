"""Tiny WebAssembly modules (text format) the sandbox tests run."""

ANSWER = '(module (func (export "run") (result i64) i64.const 42))'
TRAP = '(module (func (export "run") unreachable))'
LOOP = '(module (func (export "run") (loop (br 0))))'
BOMB = """(module (memory 1) (func (export "run")
  (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))"""

CALL = "SELECT dj._sandbox_call(convert_to(%s, 'UTF8'))"
