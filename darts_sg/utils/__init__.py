"""What every other room leans on: errors a user can cause, atomic files and locks, processes talking to each other, the allocator."""
