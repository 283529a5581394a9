"""What the host says about images: the container an image lives in (block device or
filesystem), which images to look at (targets, directories, globs, running qemu), and the
live figures of running qemu (libvirt, QMP)."""
