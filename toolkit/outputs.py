"""Writing output files so that a failure never leaves a torn or temporary file behind.

Every file the training writes whole (checkpoints, summary.json, config.json) goes through
write_atomic(): the bytes are produced in memory first, written to a temporary file in the
same directory, fsynced and renamed over the final name, then the directory is fsynced.
A full disk, a read-only file system or a lost mount at any point leaves the previous
version of the file untouched, removes the temporary file and raises WriteError, whose
message is one line naming the file and the cause (docs/faults.md lists the outcomes).

Files are created with mode 0666 minus the umask, like any file a program opens for
writing (0644 under the usual umask), so that a group can read and resume a shared run.
"""
import errno
import os
import secrets


class WriteError(OSError):
    """An output file could not be written; str() is one line naming the file and why."""

    def __init__(self, what, path, cause, action="write"):
        reason = describe(cause)
        super().__init__(getattr(cause, "errno", None) or errno.EIO,
                         f"cannot {action} {what} {path}: {reason}")
        self.path = path
        self.reason = reason

    def __str__(self):
        return self.strerror


def describe(exc):
    """The cause of an OSError in a few words ('No space left on device'), or the first line
    of any other exception's message."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path, data, what="file"):
    """Replace `path` by `data` (bytes-like) atomically; WriteError on any failure.

    `what` names the file in the error ("checkpoint", "summary").
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}-{secrets.token_hex(4)}")
    fd = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        _write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
        _fsync_directory(directory)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        _remove_quietly(tmp)
        raise WriteError(what, path, exc) from exc
    except BaseException:
        # Interrupted (KeyboardInterrupt, SystemExit): no temporary file stays behind.
        if fd is not None:
            os.close(fd)
        _remove_quietly(tmp)
        raise


def _remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        # The file system went away under us; nothing more can be cleaned.
        pass


def append_line(path, line, what="file"):
    """Append one line in a single write; on failure the file is cut back to its previous
    length (a full disk may accept part of the line) and WriteError is raised."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = None
    size = None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        size = os.fstat(fd).st_size
        _write_all(fd, data)
    except OSError as exc:
        if fd is not None and size is not None:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
        raise WriteError(what, path, exc) from exc
    finally:
        if fd is not None:
            os.close(fd)
