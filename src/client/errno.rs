//! Errno names as the server sends them (SPEC v3 §4) and their numbers
//! here, so a caller (`run`) can hand a program the errno the kernel would
//! have given it.

use crate::protocol::ServerError;

impl ServerError {
    /// The errno the server named (`"ENOENT"` → 2), for handing the error
    /// on as the kernel would have; `None` without one or for a name this
    /// platform does not know.
    ///
    /// ```
    /// let mut error = fdopen::ServerError::new(fdopen::ErrorCode::IoError, "not empty");
    /// error.errno = Some("ENOTEMPTY".into());
    /// assert_eq!(error.raw_os_error(), Some(libc::ENOTEMPTY));
    /// ```
    pub fn raw_os_error(&self) -> Option<i32> {
        errno_number(self.errno.as_deref()?)
    }
}

/// The number of an errno name on this platform.
pub fn errno_number(name: &str) -> Option<i32> {
    use libc::*;
    Some(match name {
        "EPERM" => EPERM,
        "ENOENT" => ENOENT,
        "ESRCH" => ESRCH,
        "EINTR" => EINTR,
        "EIO" => EIO,
        "ENXIO" => ENXIO,
        "E2BIG" => E2BIG,
        "EBADF" => EBADF,
        "EAGAIN" | "EWOULDBLOCK" => EAGAIN,
        "ENOMEM" => ENOMEM,
        "EACCES" => EACCES,
        "EFAULT" => EFAULT,
        "EBUSY" => EBUSY,
        "EEXIST" => EEXIST,
        "EXDEV" => EXDEV,
        "ENODEV" => ENODEV,
        "ENOTDIR" => ENOTDIR,
        "EISDIR" => EISDIR,
        "EINVAL" => EINVAL,
        "ENFILE" => ENFILE,
        "EMFILE" => EMFILE,
        "ETXTBSY" => ETXTBSY,
        "EFBIG" => EFBIG,
        "ENOSPC" => ENOSPC,
        "ESPIPE" => ESPIPE,
        "EROFS" => EROFS,
        "EMLINK" => EMLINK,
        "ERANGE" => ERANGE,
        "EDEADLK" => EDEADLK,
        "ENAMETOOLONG" => ENAMETOOLONG,
        "ENOSYS" => ENOSYS,
        "ENOTEMPTY" => ENOTEMPTY,
        "ELOOP" => ELOOP,
        "ENODATA" => ENODATA,
        "ENOTSUP" | "EOPNOTSUPP" => ENOTSUP,
        "EOVERFLOW" => EOVERFLOW,
        "ESTALE" => ESTALE,
        "EDQUOT" => EDQUOT,
        "ETIMEDOUT" => ETIMEDOUT,
        "ENOTCONN" => ENOTCONN,
        "ECONNREFUSED" => ECONNREFUSED,
        "EADDRINUSE" => EADDRINUSE,
        "EADDRNOTAVAIL" => EADDRNOTAVAIL,
        "ENOBUFS" => ENOBUFS,
        "ECANCELED" => ECANCELED,
        "EUCLEAN" => EUCLEAN,
        "ENOTSOCK" => ENOTSOCK,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn errno_names_map_to_numbers() {
        assert_eq!(errno_number("ENOENT"), Some(libc::ENOENT));
        assert_eq!(errno_number("EXDEV"), Some(libc::EXDEV));
        assert_eq!(errno_number("ENODATA"), Some(libc::ENODATA));
        assert_eq!(errno_number("EWHATEVER"), None);
        let plain = ServerError::new(ErrorCode::Denied, "no");
        assert_eq!(plain.raw_os_error(), None);
    }
}
