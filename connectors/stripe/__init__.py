"""Stripe: the payment-processor port (customers, saved methods, off-session charges, refunds)."""

from connectors.stripe.client import StripeProcessor

__all__ = ["StripeProcessor"]
