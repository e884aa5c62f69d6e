//! New credential values: uniformly random over the policy's alphabet, from the OS CSPRNG.

use keyturn_core::SecretValue;
use rand::Rng;
use rand::TryRngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::policy::Generator;

/// Generates a value per `g`: `length` characters drawn uniformly from `g.alphabet`.
///
/// `random_range` rejects biased samples, so every character is equally likely; the buffer
/// the characters are assembled in is zeroized.
#[must_use]
pub fn generate(g: &Generator) -> SecretValue {
    let mut rng = OsRng.unwrap_err();
    let mut buf = Zeroizing::new(String::with_capacity(g.length as usize * 4));
    for _ in 0..g.length {
        let i = rng.random_range(0..g.alphabet.len());
        buf.push(g.alphabet[i]);
    }
    SecretValue::new(buf.as_bytes().to_vec())
}

/// A value nobody keeps: 48 alphanumeric characters, for making a credential useless
/// (break-glass sets an alternating pair's standby user to one).
#[must_use]
pub fn throwaway() -> SecretValue {
    let alphabet: Vec<char> = crate::policy::CHARSETS[0].1.chars().collect();
    generate(&Generator::new(48, &alphabet))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen_of(alphabet: &str, length: u32) -> Generator {
        let alphabet: Vec<char> = alphabet.chars().collect();
        Generator::new(length, &alphabet)
    }

    #[test]
    fn values_have_the_length_and_alphabet_asked_for() {
        let g = gen_of("abc", 64);
        let v = generate(&g);
        assert_eq!(v.len(), 64);
        assert!(v.expose().iter().all(|b| b"abc".contains(b)));
    }

    #[test]
    fn two_values_differ() {
        let g = gen_of(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            32,
        );
        assert!(!generate(&g).ct_eq(&generate(&g)));
    }

    #[test]
    fn every_character_of_the_alphabet_is_used() {
        let g = gen_of("0123456789abcdef", 4096);
        let v = generate(&g);
        for c in "0123456789abcdef".bytes() {
            assert!(v.expose().contains(&c), "{} never drawn", c as char);
        }
    }
}
