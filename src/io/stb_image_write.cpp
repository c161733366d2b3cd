// stb_image_write's implementation, on its own: its JPEG encoder shifts a signed int into the
// sign bit (undefined by the letter, what every compiler does in practice), so the fuzz build
// leaves that one check out here while the image readers (image_io.cpp) keep every check.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#endif
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
