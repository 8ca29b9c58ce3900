"""The `fntk` command line. Its exit codes:"""

EXIT_USAGE = 2  # bad config, data or arguments: one message, no traceback
EXIT_INTERRUPTED = 130  # what a shell reports for a job stopped by Ctrl-C
