;; AdamW's per-element update (trainer/optimizer.ts), four float32 lanes at a time.
;;
;; Every operation is one IEEE float32 operation, rounded once, in torch's order (its single-tensor
;; AdamW in float32):
;;   g' = g * clip
;;   m' = m + (g' - m) * (1 - beta1)
;;   v' = v * beta2 + (g' * g') * (1 - beta2)
;;   p' = p * decay - (m' / (sqrt(v') / bias_correction2_sqrt + eps)) * step_size
;; WebAssembly's float32 arithmetic, sqrt included, is IEEE's round-to-nearest with subnormals kept,
;; so the result is bit for bit what torch's float32 kernels give, on every machine.
;;
;; Memory holds four arrays of CHUNK float32 elements, p, g, m and v, one after the other; the host
;; copies a chunk of each tensor in, calls `update`, and copies p, m and v back.
(module
  ;; 16 pages of 64 KiB: four arrays of 65,536 float32 elements (KERNEL_CHUNK in optimizer.ts).
  (memory (export "memory") 16)

  (func (export "update")
    (param $n i32)
    (param $clip f32) (param $decay f32) (param $one_minus_beta1 f32) (param $beta2 f32)
    (param $one_minus_beta2 f32) (param $bias_correction2_sqrt f32) (param $step_size f32) (param $eps f32)
    (local $p i32) (local $g i32) (local $m i32) (local $v i32)
    (local $i i32) (local $end i32) (local $vector_end i32)
    (local $gv v128) (local $mv v128) (local $vv v128)
    (local $gs f32) (local $ms f32) (local $vs f32)
    ;; byte offsets of the four arrays: 0, 256 KiB, 512 KiB, 768 KiB
    (local.set $g (i32.const 262144))
    (local.set $m (i32.const 524288))
    (local.set $v (i32.const 786432))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (local.set $vector_end (i32.and (local.get $end) (i32.const -16)))
    (block $vectors_done
      (loop $vectors
        (br_if $vectors_done (i32.ge_u (local.get $i) (local.get $vector_end)))
        (local.set $gv
          (f32x4.mul (v128.load (i32.add (local.get $g) (local.get $i))) (f32x4.splat (local.get $clip))))
        (local.set $mv
          (f32x4.add
            (v128.load (i32.add (local.get $m) (local.get $i)))
            (f32x4.mul
              (f32x4.sub (local.get $gv) (v128.load (i32.add (local.get $m) (local.get $i))))
              (f32x4.splat (local.get $one_minus_beta1)))))
        (local.set $vv
          (f32x4.add
            (f32x4.mul (v128.load (i32.add (local.get $v) (local.get $i))) (f32x4.splat (local.get $beta2)))
            (f32x4.mul (f32x4.mul (local.get $gv) (local.get $gv)) (f32x4.splat (local.get $one_minus_beta2)))))
        (v128.store (i32.add (local.get $p) (local.get $i))
          (f32x4.sub
            (f32x4.mul (v128.load (i32.add (local.get $p) (local.get $i))) (f32x4.splat (local.get $decay)))
            (f32x4.mul
              (f32x4.div
                (local.get $mv)
                (f32x4.add
                  (f32x4.div (f32x4.sqrt (local.get $vv)) (f32x4.splat (local.get $bias_correction2_sqrt)))
                  (f32x4.splat (local.get $eps))))
              (f32x4.splat (local.get $step_size)))))
        (v128.store (i32.add (local.get $m) (local.get $i)) (local.get $mv))
        (v128.store (i32.add (local.get $v) (local.get $i)) (local.get $vv))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $vectors)))
    ;; the last n mod 4 elements, one lane at a time, the same operations
    (block $tail_done
      (loop $tail
        (br_if $tail_done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $gs (f32.mul (f32.load (i32.add (local.get $g) (local.get $i))) (local.get $clip)))
        (local.set $ms
          (f32.add
            (f32.load (i32.add (local.get $m) (local.get $i)))
            (f32.mul
              (f32.sub (local.get $gs) (f32.load (i32.add (local.get $m) (local.get $i))))
              (local.get $one_minus_beta1))))
        (local.set $vs
          (f32.add
            (f32.mul (f32.load (i32.add (local.get $v) (local.get $i))) (local.get $beta2))
            (f32.mul (f32.mul (local.get $gs) (local.get $gs)) (local.get $one_minus_beta2))))
        (f32.store (i32.add (local.get $p) (local.get $i))
          (f32.sub
            (f32.mul (f32.load (i32.add (local.get $p) (local.get $i))) (local.get $decay))
            (f32.mul
              (f32.div
                (local.get $ms)
                (f32.add
                  (f32.div (f32.sqrt (local.get $vs)) (local.get $bias_correction2_sqrt))
                  (local.get $eps)))
              (local.get $step_size))))
        (f32.store (i32.add (local.get $m) (local.get $i)) (local.get $ms))
        (f32.store (i32.add (local.get $v) (local.get $i)) (local.get $vs))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $tail)))))
