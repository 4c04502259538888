"""Plain values and plumbing every other layer builds on: errors, settings, atomic writes, progress, masks and
zero counting. Imports nothing of zprune outside base."""
