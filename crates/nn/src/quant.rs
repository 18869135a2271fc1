//! Dequantisation of the GGML block formats to f32. Block layouts (32 weights a block):
//! Q8_0 = f16 scale + 32 i8; Q4_0 = f16 scale + 16 bytes of nibbles, value = d * (q - 8);
//! Q4_1 = f16 scale + f16 min + 16 bytes, value = d * q + m. In the 4-bit formats element j < 16 is the low
//! nibble of byte j and element j >= 16 the high nibble of byte j - 16.

/// IEEE half to single precision (subnormals, infinities and NaN included).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let out = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise the mantissa.
            let mut e: i32 = -14;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (((e + 127) as u32) << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(out)
}

/// Single to half precision, rounding to nearest even (for exporting F16 tensors).
pub fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exponent == 0xff {
        return sign | 0x7c00 | if mantissa != 0 { 0x200 } else { 0 };
    }
    let e = exponent - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mantissa | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rounded = (m + half - 1 + ((m >> shift) & 1)) >> shift;
        return sign | rounded as u16;
    }
    let rounded = mantissa + 0xfff + ((mantissa >> 13) & 1);
    if rounded & 0x80_0000 != 0 {
        let e = e + 1;
        if e >= 0x1f {
            return sign | 0x7c00;
        }
        return sign | ((e as u16) << 10);
    }
    sign | ((e as u16) << 10) | ((rounded >> 13) as u16)
}

pub const BLOCK: usize = 32;

fn half(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// Bytes per block of each format.
pub const Q8_0_BYTES: usize = 2 + 32;
pub const Q4_0_BYTES: usize = 2 + 16;
pub const Q4_1_BYTES: usize = 4 + 16;

pub fn dequant_q8_0(blocks: &[u8], out: &mut [f32]) {
    for (block, out) in blocks.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(BLOCK)) {
        let d = half(block, 0);
        for (o, &q) in out.iter_mut().zip(&block[2..]) {
            *o = d * (q as i8) as f32;
        }
    }
}

pub fn dequant_q4_0(blocks: &[u8], out: &mut [f32]) {
    for (block, out) in blocks.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(BLOCK)) {
        let d = half(block, 0);
        let q = &block[2..];
        for j in 0..16 {
            out[j] = d * ((q[j] & 0x0f) as i32 - 8) as f32;
            out[j + 16] = d * ((q[j] >> 4) as i32 - 8) as f32;
        }
    }
}

pub fn dequant_q4_1(blocks: &[u8], out: &mut [f32]) {
    for (block, out) in blocks.chunks_exact(Q4_1_BYTES).zip(out.chunks_exact_mut(BLOCK)) {
        let d = half(block, 0);
        let m = half(block, 2);
        let q = &block[4..];
        for j in 0..16 {
            out[j] = d * (q[j] & 0x0f) as f32 + m;
            out[j + 16] = d * (q[j] >> 4) as f32 + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_round_trips() {
        for bits in [0u16, 0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x7c00, 0xfc00, 0x3555] {
            assert_eq!(f32_to_f16(f16_to_f32(bits)), bits, "{bits:#06x}");
        }
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00, "ties round to even");
    }

    #[test]
    fn blocks_decode_by_their_layout() {
        let mut q41 = vec![0u8; Q4_1_BYTES];
        q41[..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        q41[2..4].copy_from_slice(&f32_to_f16(-1.0).to_le_bytes());
        q41[4] = 0x3a; // element 0 = 0xa, element 16 = 0x3
        let mut out = [0.0; 32];
        dequant_q4_1(&q41, &mut out);
        assert_eq!(out[0], 0.5 * 10.0 - 1.0);
        assert_eq!(out[16], 0.5 * 3.0 - 1.0);
        assert_eq!(out[1], -1.0);

        let mut q40 = vec![0u8; Q4_0_BYTES];
        q40[..2].copy_from_slice(&f32_to_f16(2.0).to_le_bytes());
        q40[2 + 15] = 0xf0;
        dequant_q4_0(&q40, &mut out);
        assert_eq!((out[15], out[31], out[0]), (-16.0, 14.0, -16.0));

        let mut q80 = vec![0u8; Q8_0_BYTES];
        q80[..2].copy_from_slice(&f32_to_f16(0.25).to_le_bytes());
        q80[2] = (-4i8) as u8;
        q80[33] = 127;
        dequant_q8_0(&q80, &mut out);
        assert_eq!((out[0], out[31], out[1]), (-1.0, 31.75, 0.0));
    }
}
