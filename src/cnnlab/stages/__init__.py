"""The stages: plain functions, a run's resolved config in, a typed result out.

Each module holds one stage (or one sweep over stages); ``cnnlab.contract`` declares what each
reads and writes, and the CLI only parses arguments and calls them.
"""
