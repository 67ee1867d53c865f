"""Baselines that alfi-tf is compared against: neural posterior estimation (NPE) and ABC."""
