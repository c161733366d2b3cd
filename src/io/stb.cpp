// stb's implementations (PNG decoding, PNG and JPEG writing), on their own: stb shifts signed
// ints into the sign bit and copies zero bytes from null pointers (undefined by the letter,
// harmless with every compiler), so the fuzz build leaves those two checks out here and keeps
// the rest: AddressSanitizer and every other undefined-behaviour check.
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG  // (JPEG is decoded by libjpeg: image_io.cpp)
#define STB_IMAGE_WRITE_IMPLEMENTATION
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
