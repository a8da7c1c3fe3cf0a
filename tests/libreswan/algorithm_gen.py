"""A seeded generator of ike= and esp= (phase2alg=) algorithm lists, valid and
invalid, for the differential test against ``ipsec algparse``."""
import random

ENCR = ["aes", "aes128", "aes256", "aes_cbc", "aes_cbc_256", "aes_ctr", "aes_ctr128", "AES256",
        "aes_gcm", "aes_gcm128", "aes_gcm_16", "aes_gcm_8", "aes_gcm_16_256", "aes_gcm_a",
        "aes_ccm", "aes_ccm_8", "aes_ccm_16", "chacha20_poly1305", "camellia", "camellia256",
        "camellia_cbc", "3des", "null", "aes_gmac", "null_auth_aes_gmac"]
BAD_ENCR = ["aes999", "aes_gcm16", "aes256_ctr", "des", "blowfish", "aes_gcm_16_512", "sha1",
            "modp2048", ""]
INTEG = ["sha1", "sha2", "sha256", "sha2_256", "sha2_512", "sha384", "md5", "aes_xcbc",
         "aes_cmac", "none", "sha1_96", "sha2_256_128", "SHA2_256", "sha"]
BAD_INTEG = ["sha3", "sha2_128", "aes", "modp2048", "poly1305", ""]
DH = ["modp2048", "modp3072", "modp4096", "modp8192", "modp1536", "dh14", "dh19", "dh20",
      "dh31", "ecp256", "ecp_384", "curve25519", "none", "MODP2048"]
BAD_DH = ["modp1024", "modp768", "dh2", "dh22", "dh32", "ecp_512", "x25519", "sha2", ""]


def _names(rnd, valid, invalid, p_invalid):
    count = 1 if rnd.random() < 0.8 else rnd.choice([2, 3])
    return "+".join(rnd.choice(invalid) if rnd.random() < p_invalid else rnd.choice(valid)
                    for _ in range(count))


def proposal(rnd, p_invalid):
    parts = [_names(rnd, ENCR, BAD_ENCR, p_invalid)]
    shape = rnd.choice(["e", "e-i", "e-i-d", "e;d", "e-i;d", "e-i-p-d", "e-i-p", "e-i-d-d"])
    if "i" in shape:
        parts.append(_names(rnd, INTEG, BAD_INTEG, p_invalid))
    if "p" in shape:
        parts.append(_names(rnd, INTEG, BAD_INTEG, p_invalid))
    text = "-".join(parts)
    for _ in range(shape.count("d")):
        text += (";" if ";" in shape and ";" not in text else "-") \
            + _names(rnd, DH, BAD_DH, p_invalid)
    return text


def algorithm_list(rnd):
    p_invalid = rnd.choice([0.0, 0.0, 0.05, 0.2])
    text = ",".join(proposal(rnd, p_invalid) for _ in range(rnd.choice([1, 1, 1, 2, 3])))
    if rnd.random() < 0.03:
        text = rnd.choice([text + ",", "," + text, text.replace("-", "--", 1),
                           text.replace("-", " ", 1), text + "-"])
    return text


def cases(seed=14, count=700):
    """[(kind, text)]: kind "ike" or "esp"."""
    rnd = random.Random(seed)
    return [(rnd.choice(["ike", "esp"]), algorithm_list(rnd)) for _ in range(count)]
