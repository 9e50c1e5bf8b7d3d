"""IBAN check digits (ISO 13616 / ISO 7064 MOD 97-10), for the demo data and for validation.

Only the arithmetic: no bank registry, no national account-number check digits, no I/O. IBANs
are personal data: callers must not log them.
"""

from __future__ import annotations


def _as_digits(text: str) -> str:
    # Letters count as two-digit numbers: A=10 ... Z=35.
    return "".join(str(int(ch, 36)) for ch in text)


def iban_check_digits(country: str, bban: str) -> str:
    """The two check digits for ``country`` (e.g. "DE") and the national ``bban``."""
    country = country.upper()
    if len(country) != 2 or not country.isalpha():
        raise ValueError(f"not an ISO 3166 country code: {country!r}")
    if not bban.isalnum():
        raise ValueError("a BBAN has only letters and digits")
    remainder = int(_as_digits(bban.upper() + country + "00")) % 97
    return f"{98 - remainder:02d}"


def german_iban(bank_code: str, account_number: str) -> str:
    """A German IBAN (22 characters) from an 8-digit Bankleitzahl and an account number."""
    if len(bank_code) != 8 or not bank_code.isdigit():
        raise ValueError("a Bankleitzahl has 8 digits")
    if not (1 <= len(account_number) <= 10) or not account_number.isdigit():
        raise ValueError("a German account number has 1 to 10 digits")
    bban = bank_code + account_number.zfill(10)
    return "DE" + iban_check_digits("DE", bban) + bban


def iban_is_valid(iban: str) -> bool:
    """True when the check digits of ``iban`` (spaces allowed) are correct (MOD 97 == 1)."""
    compact = iban.replace(" ", "").upper()
    if not (15 <= len(compact) <= 34) or not compact.isalnum() or not compact[:2].isalpha():
        return False
    if not compact[2:4].isdigit():
        return False
    return int(_as_digits(compact[4:] + compact[:4])) % 97 == 1
